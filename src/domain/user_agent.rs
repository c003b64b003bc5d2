//! A User-Agent header as a short summary for people ("Chrome on Linux", "Firefox on macOS",
//! "curl"), for the list of a user's sessions. Only the summary is stored, never the header:
//! the summary comes from a fixed vocabulary, so it is short and says nothing the browser did
//! not already send.

/// At most this much of a header is read (real ones are under 300 bytes).
const MAX_READ: usize = 1024;

/// Browsers and tools, most specific first: Chromium-based browsers also say `Chrome/`, and
/// every Chromium and WebKit browser also says `Safari/`.
const BROWSERS: &[(&str, &str)] = &[
    ("Edg/", "Edge"),
    ("EdgA/", "Edge"),
    ("EdgiOS/", "Edge"),
    ("Edge/", "Edge"),
    ("OPR/", "Opera"),
    ("OPT/", "Opera"),
    ("Opera", "Opera"),
    ("SamsungBrowser/", "Samsung Internet"),
    ("YaBrowser/", "Yandex Browser"),
    ("Vivaldi/", "Vivaldi"),
    ("FxiOS/", "Firefox"),
    ("Firefox/", "Firefox"),
    ("CriOS/", "Chrome"),
    ("Chromium/", "Chromium"),
    ("HeadlessChrome/", "Headless Chrome"),
    ("Chrome/", "Chrome"),
    ("MSIE ", "Internet Explorer"),
    ("Trident/", "Internet Explorer"),
    ("Safari/", "Safari"),
];

/// Clients that are not browsers, recognised by how their header starts.
const TOOLS: &[(&str, &str)] = &[
    ("curl/", "curl"),
    ("Wget/", "Wget"),
    ("HTTPie/", "HTTPie"),
    ("PostmanRuntime/", "Postman"),
    ("python-requests/", "Python requests"),
    ("python-httpx/", "Python httpx"),
    ("Python-urllib/", "Python urllib"),
    ("Go-http-client/", "Go"),
    ("okhttp/", "OkHttp"),
    ("node-fetch", "Node.js"),
    ("undici", "Node.js"),
    ("axios/", "axios"),
    ("reqwest", "reqwest"),
];

/// Operating systems, most specific first: Android says `Linux`, iOS says `like Mac OS X`.
const SYSTEMS: &[(&str, &str)] = &[
    ("Windows", "Windows"),
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("iPod", "iOS"),
    ("CrOS", "ChromeOS"),
    ("Macintosh", "macOS"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
    ("X11", "Linux"),
    ("FreeBSD", "FreeBSD"),
    ("OpenBSD", "OpenBSD"),
];

/// The first name in `table` whose marker `header` contains.
fn find(header: &str, table: &[(&str, &'static str)]) -> Option<&'static str> {
    table
        .iter()
        .find(|(marker, _)| header.contains(marker))
        .map(|(_, name)| *name)
}

/// The longest prefix of `header` of at most `MAX_READ` bytes that ends on a character.
fn head(header: &str) -> &str {
    if header.len() <= MAX_READ {
        return header;
    }
    let mut end = MAX_READ;
    while !header.is_char_boundary(end) {
        end -= 1;
    }
    &header[..end]
}

/// "Browser on System", the browser or tool alone when the system is unknown, "Unknown
/// browser on System" when only the system is known, and "Unknown" otherwise. At most 40
/// characters.
pub fn summarize(header: &str) -> String {
    let header = head(header.trim());
    if let Some((_, tool)) = TOOLS.iter().find(|(prefix, _)| header.starts_with(prefix)) {
        return (*tool).to_owned();
    }
    // Only Mozilla-style headers name a browser; anything else is a client we do not know.
    let browser = header
        .starts_with("Mozilla/")
        .then(|| find(header, BROWSERS))
        .flatten();
    // A Safari without `Version/` is some other WebKit app (an in-app browser, a webview).
    let browser = match browser {
        Some("Safari") if !header.contains("Version/") => None,
        other => other,
    };
    match (browser, find(header, SYSTEMS)) {
        (Some(browser), Some(system)) => format!("{browser} on {system}"),
        (Some(browser), None) => browser.to_owned(),
        (None, Some(system)) => format!("Unknown browser on {system}"),
        (None, None) => "Unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::summarize;

    #[test]
    fn common_browsers_are_named_with_their_system() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
                "Chrome on Linux",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0",
                "Firefox on macOS",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
                "Safari on macOS",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
                "Safari on iOS",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
                "Chrome on iOS",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
                "Chrome on Android",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
                "Samsung Internet on Android",
            ),
            (
                "Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0",
                "Firefox on Android",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 OPR/106.0.0.0",
                "Opera on Windows",
            ),
            (
                "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
                "Chrome on ChromeOS",
            ),
            (
                "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
                "Firefox on Linux",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
                "Internet Explorer on Windows",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
                "Headless Chrome on Linux",
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(summarize(header), expected, "{header}");
        }
    }

    #[test]
    fn tools_are_named_alone() {
        assert_eq!(summarize("curl/8.5.0"), "curl");
        assert_eq!(summarize("python-requests/2.31.0"), "Python requests");
        assert_eq!(summarize("Wget/1.21.4"), "Wget");
        assert_eq!(summarize("Go-http-client/1.1"), "Go");
    }

    #[test]
    fn what_is_not_recognised_says_so() {
        assert_eq!(summarize(""), "Unknown");
        assert_eq!(summarize("SomeBot/1.0"), "Unknown");
        assert_eq!(
            summarize("Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Strange/1.0"),
            "Unknown browser on Linux"
        );
        // A webview: WebKit without Safari's `Version/`.
        assert_eq!(
            summarize(
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Safari/604.1"
            ),
            "Unknown browser on iOS"
        );
        // A browser name outside a Mozilla-style header is not believed.
        assert_eq!(
            summarize("evil Chrome/1 on Windows"),
            "Unknown browser on Windows"
        );
    }

    #[test]
    fn the_summary_is_short_whatever_the_header() {
        let long = format!(
            "Mozilla/5.0 (Windows NT 10.0) {} Firefox/121.0",
            "x".repeat(100_000)
        );
        // Firefox's marker is past what is read; the system is not.
        assert_eq!(summarize(&long), "Unknown browser on Windows");
        let hostile = format!("Mozilla/5.0 ({}) Chrome/1", "é".repeat(600));
        assert!(summarize(&hostile).len() <= 40);
        for (_, browser) in super::BROWSERS {
            for (_, system) in super::SYSTEMS {
                assert!(format!("{browser} on {system}").len() <= 40);
            }
        }
    }
}
