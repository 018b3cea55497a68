//! `bgctl certs`: one block per certificate the daemon serves, files first,
//! then the ACME names, each with its expiry and, for ACME, the last error
//! and the next attempt.

use bgproxy_control::api::CertView;

use crate::render::Style;

/// The text of `bgctl certs`.
pub fn render(certs: &[CertView], style: &Style) -> String {
    if certs.is_empty() {
        return "no certificates: no [proxy.tls] configured\n".into();
    }
    let mut out = String::new();
    for c in certs {
        let hosts = if c.hosts.is_empty() {
            "(default certificate)".to_string()
        } else {
            c.hosts.join(", ")
        };
        out.push_str(&format!(
            "{}  [{}]\n",
            style.bold(&hosts),
            c.source.as_str()
        ));
        if let Some(f) = &c.file {
            out.push_str(&format!("  file        {f}\n"));
        }
        out.push_str(&format!(
            "  expires     {}\n",
            c.not_after.as_deref().unwrap_or("(no certificate yet)")
        ));
        if let Some(e) = &c.last_error {
            out.push_str(&format!("  last error  {}\n", style.error(e)));
        }
        if let Some(n) = &c.next_attempt {
            out.push_str(&format!("  next order  {n}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bgproxy_control::api::CertSource;

    #[test]
    fn lists_files_and_acme_names_with_their_errors() {
        let certs = [
            CertView {
                hosts: vec![],
                source: CertSource::File,
                file: Some("/etc/bgproxy/cert.pem".into()),
                not_after: Some("2027-01-01T00:00:00Z".into()),
                last_error: None,
                next_attempt: None,
            },
            CertView {
                hosts: vec!["shop.example.com".into()],
                source: CertSource::Acme,
                file: None,
                not_after: None,
                last_error: Some("connection refused".into()),
                next_attempt: Some("2026-01-01T00:05:00Z".into()),
            },
        ];
        let text = render(&certs, &Style::detect(true));
        assert!(text.contains("(default certificate)  [file]"), "{text}");
        assert!(text.contains("shop.example.com  [acme]"), "{text}");
        assert!(text.contains("last error  connection refused"), "{text}");
        assert!(text.contains("(no certificate yet)"), "{text}");
    }
}
