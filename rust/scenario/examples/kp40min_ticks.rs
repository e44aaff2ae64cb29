//! KP-40MIN for the number of ticks given (default 200 000), printing its outcome: a plain binary to
//! count the kernel's instructions per tick under `valgrind --tool=callgrind` (two tick counts, the
//! difference divided by the ticks between them: start-up cancels out). See docs/benchmarks.md.

#[path = "../tests/common/mod.rs"]
mod common;

use ketapump_scenario::{run_kp40min, Kp40Min};

fn main() {
    let ticks = std::env::args().nth(1).map_or(Ok(200_000), |a| a.parse::<u64>());
    let Ok(ticks) = ticks else {
        eprintln!("usage: kp40min_ticks [TICKS]");
        std::process::exit(2);
    };
    println!("{:?}", run_kp40min(common::kp40min_config(), &Kp40Min::STANDARD, ticks));
}
