//! Requests from another site. A web page on any site can make the browser
//! showing it send "simple" requests (GET, HEAD, and POST with a form's or
//! plain text's content type and no custom header) to any address,
//! loopback included, without asking first (no CORS preflight); and a name
//! the page's site controls can be pointed at 127.0.0.1 (DNS rebinding).
//! So every HTTP server of Harvester that acts on a request refuses:
//! - a request whose `Origin` is not its own (a page of another site),
//! - a write that a page could send without a preflight: one with none of
//!   an `Authorization` header, the [`MARKER`] header, or a content type
//!   other than a form's or plain text's,
//! - where it names them, a `Host` that is not one of its own names.
//!
//! Harvester's own clients (the CLI, the nodelet, the dashboard's page)
//! send [`MARKER`] with every request.

/// The header Harvester's clients send: a page of another site cannot set
/// it without a preflight, which nothing here answers.
pub const MARKER: &str = "x-harvester";

/// What [`refusal`] looks at of a request (header values as sent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub authorization: bool,
    pub marker: bool,
}

/// Why a request must be refused as one a page of another site could have
/// sent, if it must. `scheme`: the server's (`http` or `https`); `hosts`:
/// the names (without ports) the server answers to, or None for any.
pub fn refusal(r: &Request<'_>, scheme: &str, hosts: Option<&[String]>) -> Option<String> {
    let host = r.host.unwrap_or("");
    if let Some(hosts) = hosts
        && !hosts.iter().any(|h| h.eq_ignore_ascii_case(host_name(host)))
    {
        return Some(format!(
            "Host {host:?} is not a name of this server: requests through another name (a site's name pointed at this address) are refused"
        ));
    }
    if let Some(origin) = r.origin
        && origin != format!("{scheme}://{host}")
    {
        return Some(format!(
            "requests from a web page of another site (Origin {origin}) are refused"
        ));
    }
    let write = !matches!(r.method, "GET" | "HEAD" | "OPTIONS");
    if write && !r.authorization && !r.marker && simple_content_type(r.content_type) {
        return Some(format!(
            "a {} needs a JSON or YAML body or the {MARKER} header: a web page of another site could send this one",
            r.method
        ));
    }
    None
}

/// A `Host` header's name, without its port (`[::1]:80` is `::1`).
pub fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The names of this machine's loopback interface.
pub fn loopback_names() -> Vec<String> {
    ["127.0.0.1", "localhost", "::1"].map(String::from).to_vec()
}

/// Whether a browser sends a body of this type without a preflight.
fn simple_content_type(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "" | "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a str, content_type: Option<&'a str>) -> Request<'a> {
        Request {
            method,
            host: Some("127.0.0.1:7000"),
            content_type,
            ..Request::default()
        }
    }

    #[test]
    fn what_a_page_of_another_site_could_send_is_refused() {
        let loopback = loopback_names();
        let hosts = Some(loopback.as_slice());
        // A form's or a plain fetch's POST, with or without the page's Origin.
        for ct in [
            None,
            Some("text/plain;charset=UTF-8"),
            Some("application/x-www-form-urlencoded"),
        ] {
            assert!(refusal(&req("POST", ct), "http", hosts).is_some(), "{ct:?}");
        }
        let mut from_page = req("POST", Some("application/json"));
        from_page.origin = Some("https://evil.example");
        assert!(refusal(&from_page, "http", hosts).unwrap().contains("evil.example"));
        // A rebound name.
        let mut rebound = req("GET", None);
        rebound.host = Some("evil.example:7000");
        assert!(refusal(&rebound, "http", hosts).unwrap().contains("not a name"));
        assert!(refusal(&rebound, "http", None).is_none());

        // What Harvester's clients and tools send.
        assert!(refusal(&req("GET", None), "http", hosts).is_none());
        assert!(refusal(&req("POST", Some("application/json")), "http", hosts).is_none());
        assert!(refusal(&req("PUT", Some("application/yaml")), "http", hosts).is_none());
        let mut marked = req("POST", None);
        marked.marker = true;
        assert!(refusal(&marked, "http", hosts).is_none());
        let mut bearer = req("DELETE", None);
        bearer.authorization = true;
        assert!(refusal(&bearer, "https", None).is_none());
        let mut own_page = req("POST", Some("application/json"));
        own_page.origin = Some("http://127.0.0.1:7000");
        assert!(refusal(&own_page, "http", hosts).is_none());
        let mut v6 = req("GET", None);
        v6.host = Some("[::1]:7000");
        assert!(refusal(&v6, "http", hosts).is_none());
    }
}
