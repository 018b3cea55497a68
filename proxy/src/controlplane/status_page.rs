//! `GET /` on the control listener: the status page, one self-contained
//! HTML document (its CSS and JavaScript inline, compiled into the binary
//! with `include_str!`; no external URL, so it works offline and behind
//! any firewall).
//!
//! The page holds no data itself. It reads `GET /v1/status`,
//! `/v1/traffic`, `/v1/requests` and `/v1/apps/{app}/history`, follows
//! `GET /v1/events` (`EventSource`; with a token entered, a `fetch`
//! stream that can send the `Authorization` header) and refreshes the
//! numbers every few seconds. Actions (switch, promote, abort) are sent
//! only with an operator token typed into the page and after a
//! `confirm()`.

/// The whole page.
pub const PAGE: &str = include_str!("status_page/index.html");

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn self_contained() {
        assert!(PAGE.starts_with("<!doctype html>"));
        for external in ["http:", "https:", "//", "src=", "href=", "@import", "url("] {
            assert!(
                !PAGE.contains(external),
                "the page must not load {external}"
            );
        }
        assert!(PAGE.contains("/v1/events"));
        assert!(PAGE.contains("name=\"viewport\""), "readable on a phone");
    }
}
