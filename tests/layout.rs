//! The README's Layout table is true of the tree, and no two files of different modules import each other.
//!
//! Cargo holds the direction between the crates (`avemint` → `avemint-core` → `avemint-base`; the emulator
//! apart): an upward import does not compile. Inside a crate the compiler allows cycles, so this test reads the
//! sources: it finds every `crate::…`, `super::…` and `self::…` path outside `#[cfg(test)]` modules, resolves it
//! to the module file it names, and checks that
//! - no two files import each other through a cycle, except a parent and its own child (`mod.rs` re-exporting
//!   what a child defines, the child using its parent's types), which is one module;
//! - each crate's top-level modules import only modules listed below them in the Layout table, which therefore
//!   lists every crate and every top-level module, and only ones that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates of the workspace: (name in the Layout table, source root). Top layer first.
const CRATES: &[(&str, &str)] = &[
    ("avemint", "src"),
    ("avemint-core", "crates/avemint-core/src"),
    ("avemint-base", "crates/avemint-base/src"),
    ("ave-emulator", "crates/ave-emulator/src"),
];

/// A module path inside one crate: `["session", "renew"]`; the crate root is `[]`.
type ModPath = Vec<String>;

struct Crate {
    /// Each module file by its module path.
    files: BTreeMap<ModPath, PathBuf>,
    /// Module → the modules it names (resolved to files).
    edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn module_path(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    match stem {
        "lib" | "main" if parts.is_empty() => Some(Vec::new()),
        "mod" => Some(parts),
        _ => {
            parts.push(stem.to_owned());
            Some(parts)
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of a source file without comments, string contents and `#[cfg(test)]` modules.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut pending_test_attr = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            // A `//` inside a string literal (a URL) is rare in paths we care about; cutting there is harmless.
            Some(i) => &line[..i],
            None => line,
        };
        if trimmed.starts_with("#[cfg(test)]") {
            pending_test_attr = true;
            continue;
        }
        let opens = code.matches('{').count();
        let closes = code.matches('}').count();
        if pending_test_attr && trimmed.starts_with("mod ") && skip_depth.is_none() {
            skip_depth = Some(depth);
        }
        pending_test_attr = pending_test_attr && !trimmed.starts_with("mod ") && trimmed.starts_with('#');
        depth = (depth + opens).saturating_sub(closes);
        match skip_depth {
            Some(d) if depth <= d && closes > 0 => skip_depth = None,
            Some(_) => {}
            None => {
                out.push_str(code);
                out.push('\n');
            }
        }
    }
    out
}

/// Every path that starts with `crate`, `super` or `self` in `code`, as its segments, with `use a::{b, c::d}`
/// groups expanded one level.
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut paths = Vec::new();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| bytes[i..].starts_with(p.as_bytes()));
        let boundary = i == 0 || !(is_ident(bytes[i - 1]) || bytes[i - 1] == b'$' || bytes[i - 1] == b':');
        let Some(start) = starts.filter(|_| boundary) else {
            i += 1;
            continue;
        };
        let mut segs = vec![start.trim_end_matches("::").to_owned()];
        let mut j = i + start.len();
        loop {
            // `super::super::x`, `crate::a::b`
            let s = j;
            while j < bytes.len() && is_ident(bytes[j]) {
                j += 1;
            }
            if j > s {
                segs.push(code[s..j].to_owned());
                if bytes[j..].starts_with(b"::") {
                    j += 2;
                    continue;
                }
                paths.push(segs.clone());
                break;
            }
            if j < bytes.len() && bytes[j] == b'{' {
                let end = code[j..].find('}').map_or(bytes.len(), |e| j + e);
                for item in code[j + 1..end].split(',') {
                    let mut full = segs.clone();
                    full.extend(
                        item.trim()
                            .split("::")
                            .map(|s| s.trim().trim_start_matches('{').to_owned())
                            .take_while(|s| !s.is_empty() && s.bytes().all(is_ident)),
                    );
                    paths.push(full);
                }
                j = end;
            } else {
                paths.push(segs.clone());
            }
            break;
        }
        i = j.max(i + 1);
    }
    paths
}

/// The module file a path names, seen from module `from` (the longest prefix that is a module file).
fn resolve(from: &ModPath, path: &[String], files: &BTreeMap<ModPath, PathBuf>) -> Option<ModPath> {
    let mut base: ModPath = Vec::new();
    let mut rest = path;
    // `self` and `super` are relative to the module the file is (`foo.rs` is module `foo` as much as
    // `foo/mod.rs` is).
    match rest.first().map(String::as_str) {
        Some("crate") => rest = &rest[1..],
        Some("self") | Some("super") => {
            base = from.clone();
            while let Some(first) = rest.first() {
                match first.as_str() {
                    "self" => rest = &rest[1..],
                    "super" => {
                        base.pop();
                        rest = &rest[1..];
                    }
                    _ => break,
                }
            }
        }
        _ => return None,
    }
    let mut best = None;
    let mut candidate = base.clone();
    if files.contains_key(&candidate) {
        best = Some(candidate.clone());
    }
    for seg in rest {
        candidate.push(seg.clone());
        if files.contains_key(&candidate) {
            best = Some(candidate.clone());
        } else {
            break;
        }
    }
    best
}

fn read_crate(src: &str) -> Crate {
    let src = root().join(src);
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let mut files = BTreeMap::new();
    for p in &paths {
        // `main.rs` beside `lib.rs` is a second crate root that only uses the library by name.
        if p.file_name().is_some_and(|f| f == "main.rs") && src.join("lib.rs").exists() {
            continue;
        }
        if let Some(m) = module_path(&src, p) {
            files.insert(m, p.clone());
        }
    }
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (m, p) in &files {
        let text = std::fs::read_to_string(p).expect("read source");
        for path in paths_in(&code_of(&text)) {
            if let Some(target) = resolve(m, &path, &files)
                && target != *m
            {
                edges.entry(m.clone()).or_default().insert(target);
            }
        }
    }
    Crate { files, edges }
}

fn is_ancestor(a: &ModPath, b: &ModPath) -> bool {
    a.len() < b.len() && b.starts_with(a)
}

/// A cycle through `start` in `edges` (edges between a module and its ancestors left out), if any.
fn cycle_from(start: &ModPath, edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    let mut stack = vec![(start.clone(), vec![start.clone()])];
    let mut seen = BTreeSet::new();
    while let Some((node, trail)) = stack.pop() {
        for next in edges.get(&node).into_iter().flatten() {
            if is_ancestor(next, &node) || is_ancestor(&node, next) {
                continue;
            }
            if next == start {
                let mut cycle = trail.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut t = trail.clone();
                t.push(next.clone());
                stack.push((next.clone(), t));
            }
        }
    }
    None
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "<root>".to_owned()
    } else {
        m.join("::")
    }
}

#[test]
fn no_two_files_of_different_modules_import_each_other() {
    let mut cycles = Vec::new();
    for (name, src) in CRATES {
        let krate = read_crate(src);
        let mut reported = BTreeSet::new();
        for m in krate.files.keys() {
            if let Some(cycle) = cycle_from(m, &krate.edges) {
                let key: BTreeSet<_> = cycle.iter().cloned().collect();
                if reported.insert(key) {
                    let text: Vec<_> = cycle.iter().map(show).collect();
                    cycles.push(format!("{name}: {}", text.join(" → ")));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between module files:\n{}",
        cycles.join("\n")
    );
}

/// The Layout table's rows, in order: (crate, top-level module or `None` for the crate's row).
fn layout_rows() -> Vec<(String, Option<String>)> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme.split("\n## Layout\n").nth(1).expect("a Layout section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let (Some(krate), Some(module)) = (cells.first(), cells.get(1)) else {
            continue;
        };
        let krate = krate.trim_start_matches("| ").trim().trim_matches('`');
        if !CRATES.iter().any(|(n, _)| *n == krate) {
            continue;
        }
        let module = module.trim();
        let module = module
            .split('`')
            .nth(1)
            .map(|m| m.trim_end_matches('/').trim_end_matches(".rs").to_owned());
        rows.push((krate.to_owned(), module.filter(|m| !m.is_empty() && m != "*")));
    }
    rows
}

#[test]
fn the_layout_table_lists_every_module_and_each_imports_only_those_below_it() {
    let rows = layout_rows();
    let mut problems = Vec::new();
    for (name, src) in CRATES {
        let krate = read_crate(src);
        let top: BTreeSet<String> = krate
            .files
            .keys()
            .filter(|m| m.len() == 1)
            .map(|m| m[0].clone())
            .collect();
        let listed: Vec<String> = rows
            .iter()
            .filter(|(c, _)| c == name)
            .filter_map(|(_, m)| m.clone())
            .collect();
        if !rows.iter().any(|(c, m)| c == name && m.is_none()) {
            problems.push(format!("{name}: no row for the crate itself"));
        }
        for m in &top {
            if !listed.contains(m) {
                problems.push(format!("{name}: module `{m}` is not in the Layout table"));
            }
        }
        for m in &listed {
            // `main.rs` beside `lib.rs` is the binary's root, not a module of the library.
            if !top.contains(m) && !root().join(src).join(format!("{m}.rs")).exists() {
                problems.push(format!(
                    "{name}: the Layout table lists `{m}`, which is not a module of the crate"
                ));
            }
        }
        // Top-level edges, each checked against the order of the table.
        for (from, targets) in &krate.edges {
            let Some(from_top) = from.first() else { continue };
            for to in targets {
                let Some(to_top) = to.first() else { continue };
                if to_top == from_top {
                    continue;
                }
                let (Some(a), Some(b)) = (
                    listed.iter().position(|m| m == from_top),
                    listed.iter().position(|m| m == to_top),
                ) else {
                    continue;
                };
                if b < a {
                    problems.push(format!(
                        "{name}: `{}` imports `{}`, which the Layout table lists above it",
                        show(from),
                        show(to)
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the Layout table and the tree disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_reader_finds_paths_and_leaves_tests_out() {
    let code = code_of(
        "use crate::a::b;\nuse super::{c, d::e};\n// use crate::comment;\nfn f() { crate::g::h(); }\n\
         #[cfg(test)]\nmod tests {\n    use crate::hidden;\n}\nuse self::k;\n",
    );
    let found: Vec<String> = paths_in(&code).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        ["crate::a::b", "super::c", "super::d::e", "crate::g::h", "self::k"]
    );
}
