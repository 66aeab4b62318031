//! The `lpmesh` binary's commands; `main.rs` parses the command line and dispatches here.

pub mod bench;
pub mod daemon;
pub mod demo;
pub mod hq;
pub mod records;
pub mod store;
#[cfg(feature = "vision")]
pub mod vision;

/// The multi-threaded runtime a one-shot command (a benchmark, an HQ command) runs on: two workers are
/// what a store node or a small HQ box has to spare.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// An error and its causes, each once, for the terminal. The library's errors already say what
/// caused them in their own message and keep the cause as their source too, where `{:#}` would
/// print it twice; a context added here says nothing of its cause, which is then appended.
pub fn report(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read x.toml: {source}")]
    struct Read {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_is_reported_once_whether_or_not_the_message_above_it_says_it() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::from(Read { source: io() });
        assert_eq!(super::report(&e), "cannot read x.toml: no such file");
        let e = Err::<(), _>(io()).context("loading the zones").unwrap_err();
        assert_eq!(super::report(&e), "loading the zones: no such file");
    }
}
