"""Running a QA test on a pump URL: the in-process simulator built with the test's syringe, or a real
pump (or a hw-sim process) through the same driver a session uses."""

from __future__ import annotations

from ketapump import _core
from ketapump.errors import ConfigurationError
from ketapump.wire import SimTransport, open_transport, split_url


def open_sim_pump(url: str) -> _core.SimPump:
    """The simulated pump a ``sim://`` URL describes (its parameters checked as for any run)."""
    transport = open_transport(url)
    assert isinstance(transport, SimTransport)
    return transport.pump


def sim_url_with_syringe(url: str, syringe: str) -> str:
    """A ``sim://`` URL that builds the simulated pump with the test's syringe (a URL naming another
    syringe is refused: the run and the pump would disagree on its size)."""
    named = split_url(url)[2].get("syringe")
    if named is None:
        return f"{url}{'&' if '?' in url else '?'}syringe={syringe}"
    if named != syringe:
        raise ConfigurationError("syringe", f"--syringe {syringe} but the pump URL names {named}")
    return url
