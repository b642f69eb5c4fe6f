//! Errors on one line: the error and its causes, joined by `: `.

use std::error::Error;

/// Returns the error and its causes, joined by `: `, skipping a cause whose text the line
/// already holds (an error that shows its cause in its own message is not repeated).
///
/// ```
/// # use flowlog_runtime::error_chain;
/// let io = std::io::Error::other("disk full");
/// # #[derive(Debug)] struct Outer(std::io::Error);
/// # impl std::fmt::Display for Outer {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
/// #         f.write_str("cannot write spool/1.seg")
/// #     }
/// # }
/// # impl std::error::Error for Outer {
/// #     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> { Some(&self.0) }
/// # }
/// assert_eq!(error_chain(&Outer(io)), "cannot write spool/1.seg: disk full");
/// ```
pub fn error_chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    /// An error with a message and an optional cause.
    #[derive(Debug)]
    struct Layer {
        message: String,
        cause: Option<Box<Layer>>,
    }

    impl Layer {
        fn new(message: &str, cause: Option<Layer>) -> Self {
            Layer {
                message: message.to_owned(),
                cause: cause.map(Box::new),
            }
        }
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.cause.as_deref().map(|c| c as &(dyn Error + 'static))
        }
    }

    #[test]
    fn causes_are_joined() {
        let e = Layer::new("a", Some(Layer::new("b", Some(Layer::new("c", None)))));
        assert_eq!(error_chain(&e), "a: b: c");
        let alone = Layer::new("only", None);
        assert_eq!(error_chain(&alone), "only");
    }

    #[test]
    fn a_cause_already_shown_is_skipped() {
        // `put x failed: denied` whose cause is `denied`, whose cause is `errno 13`.
        let e = Layer::new(
            "put x failed: denied",
            Some(Layer::new("denied", Some(Layer::new("errno 13", None)))),
        );
        assert_eq!(error_chain(&e), "put x failed: denied: errno 13");
        // A cause is compared with the whole line so far, causes included.
        let e = Layer::new(
            "connect",
            Some(Layer::new(
                "tls: bad cert",
                Some(Layer::new("bad cert", None)),
            )),
        );
        assert_eq!(error_chain(&e), "connect: tls: bad cert");
    }
}
