//! The architecture test: reads the module references of every `src/**/*.rs` and fails on one
//! that points to a higher layer, on a module that has no layer, and on an import cycle, so that
//! courier's structure cannot rot unnoticed. docs/architecture.md explains the layers.
//!
//! A module is a file (`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`). Its references are the
//! paths of its `use` declarations (grouped ones included: `use crate::{a, b::{c, d}}`), and the
//! inline `crate::…`, `super::…` and `self::…` paths in its code, each resolved to the longest
//! module it names. Comments, string literals and `#[cfg(test)]` items do not count: tests may
//! reach anywhere. `super::` is resolved against the file's module (an inline non-test module's
//! `super::` would resolve one level too high; src/ has none that names another module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use modules of its own layer or of a lower one.
/// Each entry is a module or a module with its submodules (`db` covers `db::users`).
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "crypto",
            "clock",
            "fault",
            "domain",
            "request_context",
            "body_deadline",
            "dpop",
        ],
    ),
    ("configuration", &["config"]),
    ("storage and cache", &["db", "cache"]),
    (
        "domain services",
        &[
            "app_cache",
            "session",
            "tokens",
            "oidc",
            "services",
            "connections",
            "live",
        ],
    ),
    ("state", &["state"]),
    (
        "routes",
        &[
            "routes",
            "error",
            "middleware",
            "limits",
            "metrics",
            "proxy",
            "websocket",
        ],
    ),
    ("wiring", &["startup", "telemetry", "housekeeping"]),
    (
        "entry",
        &["", "main", "check", "reseal", "sessions_command"],
    ),
];

/// References that are forbidden whatever the layers say: (from, to, why). `from` and `to`
/// cover submodules, as in `LAYERS`.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    (
        "",
        "routes",
        "only `startup` wires routes; nothing else names a handler",
    ),
    (
        "cache",
        "app_cache",
        "the cache is generic: it names none of the types it holds",
    ),
];

/// Modules that may break `FORBIDDEN` (the layers have no exceptions).
const FORBIDDEN_EXEMPT: &[(&str, &str)] = &[("startup", "routes"), ("routes", "routes")];

/// Upward references that are known and being removed: (from, to, what removes it). Each entry
/// must still be needed — the test fails on one that is not, so the list only shrinks.
const PENDING: &[(&str, &str, &str)] = &[];

/// This crate's `src/`, or `ARCHITECTURE_SRC` (to check another tree, such as a merge's).
fn src_dir() -> PathBuf {
    std::env::var_os("ARCHITECTURE_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// `a::b` for `src/a/b.rs` and `src/a/b/mod.rs`; `` for lib.rs; `main` for main.rs.
fn module_name(relative: &Path) -> String {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code without comments and with every string and char literal emptied.
fn strip_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), which stays.
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The index just past the brace that closes the one at `open`.
fn matching_brace(chars: &[char], open: usize) -> usize {
    let mut depth = 0;
    for (k, c) in chars.iter().enumerate().skip(open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    chars.len()
}

/// The code without `#[cfg(test)]` items (a test module, a test-only function or import).
fn strip_test_items(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let marker: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i..].starts_with(&marker) {
            // The item ends at its first `;` unless a `{` comes first, then at its match.
            let mut j = i + marker.len();
            while j < chars.len() && chars[j] != ';' && chars[j] != '{' {
                j += 1;
            }
            i = if chars.get(j) == Some(&'{') {
                matching_brace(&chars, j)
            } else {
                j + 1
            };
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Splits `a, b::{c, d}, e` at the commas outside braces.
fn split_top_level(list: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (k, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&list[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    parts
}

/// The paths a use tree names: `a::{b, c::d}` gives `a::b` and `a::c::d`.
fn expand_use_tree(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let segments = |text: &str| -> Vec<String> {
        text.split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty() && *s != "*" && *s != "self")
            .map(str::to_owned)
            .collect()
    };
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let base: Vec<String> = prefix
            .iter()
            .cloned()
            .chain(segments(&tree[..open]))
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        for part in split_top_level(inner) {
            expand_use_tree(&base, part, out);
        }
    } else {
        // `a::b as c` names `a::b`.
        let words: Vec<&str> = tree.split_whitespace().collect();
        let path = match words.iter().position(|w| *w == "as") {
            Some(k) => words[..k].concat(),
            None => words.concat(),
        };
        out.push(prefix.iter().cloned().chain(segments(&path)).collect());
    }
}

/// Every path (as segments) that the code names: use declarations and inline paths that start
/// with `crate`, `super` or `self`, and use declarations of a child module by its bare name.
fn referenced_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let at_word = i == 0 || !is_ident_char(chars[i - 1]);
        if at_word && chars[i..].starts_with(&['u', 's', 'e']) {
            let after = chars.get(i + 3).copied().unwrap_or(' ');
            if after.is_whitespace() {
                let mut j = i + 3;
                let mut depth = 0;
                while j < chars.len() && !(chars[j] == ';' && depth == 0) {
                    match chars[j] {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                let tree: String = chars[i + 3..j.min(chars.len())].iter().collect();
                expand_use_tree(&[], &tree, &mut paths);
                i = j;
                continue;
            }
        }
        // Inline paths: `crate::a::b`, `super::super::x`, `self::x`.
        if at_word && (i < 2 || chars[i - 2..i] != [':', ':']) {
            for root in ["crate", "super", "self"] {
                let root_chars: Vec<char> = root.chars().collect();
                if chars[i..].starts_with(&root_chars)
                    && chars[i + root_chars.len()..].starts_with(&[':', ':'])
                {
                    let mut j = i;
                    while j < chars.len() && (is_ident_char(chars[j]) || chars[j] == ':') {
                        j += 1;
                    }
                    let text: String = chars[i..j].iter().collect();
                    let segments: Vec<String> = text
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                    paths.push(segments);
                    i = j;
                    break;
                }
            }
        }
        i += 1;
    }
    paths
}

/// The module a path names, seen from `from`: its longest prefix that is a module.
fn resolve(from: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<String> = if from.is_empty() || from == "main" {
        Vec::new()
    } else {
        from.split("::").map(str::to_owned).collect()
    };
    let rest: &[String] = match path.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            &path[1..]
        }
        Some("super") => {
            let supers = path.iter().take_while(|s| *s == "super").count();
            for _ in 0..supers {
                base.pop()?;
            }
            &path[supers..]
        }
        Some("self") => &path[1..],
        // A child module by its bare name (`pub use store::X` in session/mod.rs).
        Some(first) => {
            let child: Vec<String> = base.iter().cloned().chain([first.to_owned()]).collect();
            if !modules.contains(&child.join("::")) {
                return None;
            }
            path
        }
        None => return None,
    };
    let full: Vec<String> = base.into_iter().chain(rest.iter().cloned()).collect();
    (1..=full.len())
        .rev()
        .map(|n| full[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

/// Whether `module` is `prefix` or inside it (`` covers nothing but the crate root).
fn covers(prefix: &str, module: &str) -> bool {
    if prefix.is_empty() {
        return module.is_empty();
    }
    module == prefix || module.starts_with(&format!("{prefix}::"))
}

fn covers_any(prefix: &str, module: &str) -> bool {
    prefix.is_empty() || covers(prefix, module)
}

fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    LAYERS
        .iter()
        .enumerate()
        .find_map(|(rank, (name, members))| {
            members
                .iter()
                .any(|m| covers(m, module))
                .then_some((rank, *name))
        })
}

/// Module → (file, the modules it references).
fn module_graph(src: &Path) -> BTreeMap<String, (PathBuf, BTreeSet<String>)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_name(f.strip_prefix(src).unwrap()))
        .collect();
    files
        .iter()
        .map(|file| {
            let module = module_name(file.strip_prefix(src).unwrap());
            let text = std::fs::read_to_string(file).unwrap();
            let code = strip_test_items(&strip_comments_and_literals(&text));
            let targets = referenced_paths(&code)
                .iter()
                .filter_map(|path| resolve(&module, path, &modules))
                .filter(|target| *target != module)
                .collect();
            (module, (file.clone(), targets))
        })
        .collect()
}

/// What breaks the rules in `graph`, one sentence each.
fn violations(graph: &BTreeMap<String, (PathBuf, BTreeSet<String>)>) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending_used = BTreeSet::new();
    for (module, (file, targets)) in graph {
        let file = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(file)
            .display();
        let Some((rank, layer)) = layer_of(module) else {
            found.push(format!(
                "{file}: module `{module}` has no layer: add it to LAYERS in tests/architecture.rs \
                 and to docs/architecture.md"
            ));
            continue;
        };
        for target in targets {
            let Some((target_rank, target_layer)) = layer_of(target) else {
                continue; // reported as a module without a layer
            };
            if target_rank > rank {
                let pending = PENDING
                    .iter()
                    .position(|(from, to, _)| covers(from, module) && covers(to, target));
                match pending {
                    Some(k) => {
                        pending_used.insert(k);
                    }
                    None => found.push(format!(
                        "{file}: `{module}` ({layer}) uses `{target}` ({target_layer}), a higher \
                         layer; move the shared type down, or call through the higher layer"
                    )),
                }
            }
            for (from, to, why) in FORBIDDEN {
                let exempt = FORBIDDEN_EXEMPT
                    .iter()
                    .any(|(m, t)| covers(m, module) && covers(t, target));
                if covers_any(from, module) && covers(to, target) && !exempt {
                    found.push(format!(
                        "{file}: `{module}` uses `{target}`, which is forbidden: {why}"
                    ));
                }
            }
        }
    }
    for (k, (from, to, what)) in PENDING.iter().enumerate() {
        if !pending_used.contains(&k) {
            found.push(format!(
                "tests/architecture.rs: the pending exception `{from}` → `{to}` ({what}) is no \
                 longer needed: delete it from PENDING"
            ));
        }
    }
    found
}

/// The import cycles among modules (a module and its own submodules do not count).
fn cycles(graph: &BTreeMap<String, (PathBuf, BTreeSet<String>)>) -> Vec<Vec<String>> {
    let edges = |m: &str| -> Vec<String> {
        graph[m]
            .1
            .iter()
            .filter(|t| !covers(m, t) && !covers(t, m) && graph.contains_key(*t))
            .cloned()
            .collect()
    };
    let mut found = Vec::new();
    let mut reported = BTreeSet::new();
    for start in graph.keys() {
        // Depth-first from `start`, looking for a way back to it.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, path)) = stack.pop() {
            for next in edges(&at) {
                if next == *start {
                    let mut members = path.clone();
                    members.sort();
                    if reported.insert(members) {
                        found.push(path.clone());
                    }
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next, longer));
                }
            }
        }
    }
    found
}

#[test]
fn no_module_reference_breaks_the_layer_rules() {
    let graph = module_graph(&src_dir());
    assert!(graph.len() > 20, "src/ was not read");
    let found = violations(&graph);
    assert!(
        found.is_empty(),
        "{} reference(s) break the layer rules (docs/architecture.md):\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_in_a_cycle() {
    let graph = module_graph(&src_dir());
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles:\n{}",
        found
            .iter()
            .map(|c| format!("{} → {}", c.join(" → "), c[0]))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// The reader itself, on made-up code: a reader that misses references would pass anything.

fn graph_of(files: &[(&str, &str)]) -> BTreeMap<String, (PathBuf, BTreeSet<String>)> {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let graph = module_graph(dir.path());
    graph
        .into_iter()
        .map(|(m, (f, t))| (m, (PathBuf::from(f.file_name().unwrap()), t)))
        .collect()
}

fn targets_of(graph: &BTreeMap<String, (PathBuf, BTreeSet<String>)>, module: &str) -> Vec<String> {
    graph[module].1.iter().cloned().collect()
}

const MODULES: &[(&str, &str)] = &[
    (
        "lib.rs",
        "pub mod db; pub mod routes; pub mod tokens; pub mod crypto;",
    ),
    ("db/mod.rs", "pub mod users; pub mod sessions;"),
    ("db/sessions.rs", ""),
    ("routes/mod.rs", "pub mod me;"),
    ("routes/me.rs", ""),
    ("tokens.rs", ""),
    ("crypto.rs", ""),
];

fn with_users(text: &str) -> BTreeMap<String, (PathBuf, BTreeSet<String>)> {
    let mut files = MODULES.to_vec();
    files.push(("db/users.rs", text));
    graph_of(&files)
}

#[test]
fn an_upward_import_is_reported_with_its_file_and_layers() {
    let graph = with_users("use crate::routes::me;\nfn f() {}\n");
    assert_eq!(targets_of(&graph, "db::users"), ["routes::me"]);
    let found = violations(&graph);
    assert!(
        found.iter().any(|v| v.contains("users.rs")
            && v.contains("`db::users` (storage and cache) uses `routes::me` (routes)")),
        "{found:?}"
    );
}

#[test]
fn grouped_inline_and_super_paths_are_all_read() {
    let graph = with_users(
        "use crate::{crypto::KeyRing, routes::{me::{self, View}}};\n\
         use super::sessions as s;\n\
         fn f() -> crate::tokens::TokenSet { super::super::tokens::x() }\n",
    );
    assert_eq!(
        targets_of(&graph, "db::users"),
        ["crypto", "db::sessions", "routes::me", "tokens"]
    );
}

#[test]
fn comments_strings_and_test_items_are_not_references() {
    let graph = with_users(
        "//! See `crate::routes::me`.\n\
         /* crate::tokens::x /* nested crate::tokens */ */\n\
         const A: &str = \"crate::routes::me\";\n\
         const B: &str = r#\"use crate::tokens;\"#;\n\
         const C: char = '\"';\n\
         fn f<'a>(x: &'a str) -> &'a str { x }\n\
         #[cfg(test)]\n\
         use crate::routes::me;\n\
         #[cfg(test)]\n\
         mod tests { use crate::tokens::x; fn g() { crate::routes::me::h(); } }\n\
         fn real() { crate::crypto::seal(); }\n",
    );
    assert_eq!(targets_of(&graph, "db::users"), ["crypto"]);
}

#[test]
fn a_cycle_and_a_module_without_a_layer_are_reported() {
    let graph = graph_of(&[
        ("lib.rs", "pub mod tokens; pub mod crypto; pub mod helpers;"),
        ("tokens.rs", "use crate::crypto;"),
        ("crypto.rs", "fn f() { crate::tokens::x(); }"),
        ("helpers.rs", ""),
    ]);
    assert_eq!(cycles(&graph).len(), 1);
    let found = violations(&graph);
    assert!(
        found
            .iter()
            .any(|v| v.contains("module `helpers` has no layer")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|v| v.contains("`crypto` (leaves) uses `tokens` (domain services)")),
        "{found:?}"
    );
}
