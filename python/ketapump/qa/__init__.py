"""QA tools: IEC 60601-2-24 style accuracy analysis (more to come: occlusion tests, fault campaigns)."""
