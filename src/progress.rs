//! Progress bars for the long CLI commands (`eval`, `bench`): one style, drawn on stderr only
//! when it is a terminal, so logs, pipes and tests see nothing. `snapshop import` has its own
//! richer bars (src/import/); the server reports its own long work in its logs instead. This
//! module must never print to stdout, which carries the commands' results.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps labelled `what`: done/total, rate and ETA.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30.cyan/blue}] {pos}/{len} {per_sec:>10} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}
