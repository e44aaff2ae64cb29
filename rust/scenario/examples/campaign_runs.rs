//! The shipped `default` campaign for the seeds `FIRST..FIRST+COUNT` (default 0..40), one outcome per
//! line: a plain binary to count a campaign run's instructions under `valgrind --tool=callgrind` (the
//! same seeds before and after a change) and to compare outcomes byte for byte. See docs/benchmarks.md.

#[path = "../tests/common/mod.rs"]
mod common;

use ketapump_core::KernelConfig;
use ketapump_scenario::campaign::run;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| args.get(i).map_or(Ok(default), |a| a.parse::<u64>());
    let (Ok(count), Ok(first)) = (number(0, 40), number(1, 0)) else {
        eprintln!("usage: campaign_runs [COUNT] [FIRST]");
        std::process::exit(2);
    };
    let config = KernelConfig::from_raw(common::raw()).expect("the default configuration is valid");
    let spec = common::spec();
    for seed in first..first + count {
        match run(&config, &spec, seed) {
            Ok(outcome) => println!("{outcome:?}"),
            Err(e) => println!("seed {seed}: {e:?}"),
        }
    }
}
