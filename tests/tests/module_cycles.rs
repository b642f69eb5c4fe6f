//! No import circle between the modules of a crate: for every crate of the workspace, the
//! files' `crate::…`, `super::…` and `self::…` paths give a graph of modules, and the graph
//! must have no cycle. Modules are compared where their paths part (`a::x` using `b::y` is
//! `a` using `b`), so a circle is one between sibling modules at some level; a module using
//! its own ancestor or descendant does not count. A failure lists each circle with the
//! paths that tie it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose modules are checked.
const CRATES: &[&str] = &[
    "formats",
    "transport",
    "runtime",
    "publish",
    "aggregator",
    "agent",
    "benches",
    "fuzz-harness",
];

/// A module path: `["pipeline", "stager"]`; the crate root is empty.
type Module = Vec<String>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file under `src/` defines.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") || !parts.is_empty() && stem != "mod" {
        parts.push(stem.to_owned());
    }
    // `src/bin/x.rs` are crate roots of their own: keep them apart under their name.
    parts
}

/// The code of a file without comments (doc comments name paths too).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The code of a file without its unit tests (`#[cfg(test)] mod tests`).
fn without_tests(text: &str) -> &str {
    let mut at = 0;
    while let Some(i) = text[at..].find("#[cfg(test)]") {
        let start = at + i;
        let rest = text[start + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod ") {
            return &text[..start];
        }
        at = start + 1;
    }
    text
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path the code names that starts with `crate::`, `super::` or `self::`, as its
/// segments (lowercase ones only: types and functions end a module path). `use a::{b, c::d}`
/// gives `a::b` and `a::c::d` (one level of braces).
fn paths(code: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && code[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let head = start.trim_end_matches("::").to_owned();
            let rest = &code[at + start.len()..];
            let mut segments = Vec::new();
            let mut tail = rest;
            while tail.starts_with("super::") {
                segments.push("super".to_owned());
                tail = &tail["super::".len()..];
            }
            loop {
                let word: String = tail.chars().take_while(|c| is_ident(*c)).collect();
                if word.is_empty() {
                    break;
                }
                tail = &tail[word.len()..];
                segments.push(word);
                if let Some(t) = tail.strip_prefix("::") {
                    tail = t;
                } else {
                    break;
                }
            }
            if let Some(inner) = tail.strip_prefix('{') {
                let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
                for item in inner.split(',') {
                    let item: Vec<String> = item
                        .trim()
                        .split("::")
                        .map(|s| s.chars().take_while(|c| is_ident(*c)).collect())
                        .take_while(|s: &String| !s.is_empty())
                        .collect();
                    let mut path = segments.clone();
                    path.extend(item);
                    out.push((head.clone(), path));
                }
            } else {
                out.push((head, segments));
            }
        }
    }
    out
}

/// The longest known module that `path` (from `module`) names.
fn resolve(
    module: &Module,
    head: &str,
    path: &[String],
    known: &BTreeSet<Module>,
) -> Option<Module> {
    let mut base: Module = match head {
        "crate" => Vec::new(),
        // In `a/b.rs` (module a::b) `super` is `a`; in `a/mod.rs` (module a) too it is the
        // parent of `a`, and `self` is `a`.
        "super" => module[..module.len().saturating_sub(1)].to_vec(),
        _ => module.clone(),
    };
    let mut rest = path;
    while rest.first().is_some_and(|s| s == "super") {
        base.pop();
        rest = &rest[1..];
    }
    let mut best = None;
    let mut candidate = base.clone();
    if known.contains(&candidate) {
        best = Some(candidate.clone());
    }
    for segment in rest {
        candidate.push(segment.clone());
        if known.contains(&candidate) {
            best = Some(candidate.clone());
        } else {
            break;
        }
    }
    best
}

fn related(a: &Module, b: &Module) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Tarjan's strongly connected components of size > 1.
fn circles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        on_stack: BTreeSet<Module>,
        next: usize,
        out: Vec<Vec<Module>>,
    }
    fn visit(s: &mut State<'_>, v: &Module) {
        s.index.insert(v.clone(), s.next);
        s.low.insert(v.clone(), s.next);
        s.next += 1;
        s.stack.push(v.clone());
        s.on_stack.insert(v.clone());
        let targets: Vec<Module> = s
            .edges
            .get(v)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        for w in &targets {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v.clone(), low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v.clone(), low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(&w);
                let done = &w == v;
                component.push(w);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn show(m: &Module) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

/// The import circles of the crate in `dir`, each as the edges that tie it.
fn crate_circles(dir: &Path) -> Vec<String> {
    let src = dir.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.starts_with(src.join("bin")));
    let modules: BTreeMap<Module, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let known: BTreeSet<Module> = modules.keys().cloned().collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut names: BTreeMap<(Module, Module), BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        for (head, path) in paths(&without_comments(without_tests(&text))) {
            let Some(target) = resolve(module, &head, &path, &known) else {
                continue;
            };
            if related(module, &target) {
                continue;
            }
            // Compared where the two part: `a::x` using `b::y` is `a` using `b`.
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            let from = module[..=common].to_vec();
            let to = target[..=common].to_vec();
            edges.entry(from.clone()).or_default().insert(to.clone());
            names.entry((from, to)).or_default().insert(format!(
                "{} uses {head}::{}",
                show(module),
                path.join("::")
            ));
        }
    }
    circles(&edges)
        .into_iter()
        .map(|circle| {
            let members: BTreeSet<&Module> = circle.iter().collect();
            let mut text = format!(
                "circle of {}:",
                circle.iter().map(show).collect::<Vec<_>>().join(", ")
            );
            for ((from, to), used) in &names {
                if members.contains(from) && members.contains(to) {
                    let used: Vec<&String> = used.iter().take(4).collect();
                    text.push_str(&format!("\n    {} -> {}: {used:?}", show(from), show(to)));
                }
            }
            text
        })
        .collect()
}

/// Circles tolerated for now, as (crate, its modules): none. The test fails on any circle
/// not listed here, and on a listed one that is gone (so that this list only shrinks).
const KNOWN_CIRCLES: &[(&str, &str)] = &[];

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let root = workspace();
    let mut new = Vec::new();
    let mut seen = BTreeSet::new();
    for name in CRATES {
        let dir = root.join(name);
        if !dir.join("src").exists() {
            continue;
        }
        for circle in crate_circles(&dir) {
            let members = circle
                .trim_start_matches("circle of ")
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            if KNOWN_CIRCLES.contains(&(name, members.as_str())) {
                seen.insert((*name, members));
            } else {
                new.push(format!("{name}: {circle}"));
            }
        }
    }
    assert!(
        new.is_empty(),
        "import circles between modules:\n{}",
        new.join("\n")
    );
    let gone: Vec<_> = KNOWN_CIRCLES
        .iter()
        .filter(|(c, m)| !seen.contains(&(*c, (*m).to_owned())))
        .collect();
    assert!(
        gone.is_empty(),
        "these known circles are gone: remove them from KNOWN_CIRCLES: {gone:?}"
    );
}

#[test]
fn the_check_finds_a_circle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "pub mod c;\nuse crate::b::B;\n").unwrap();
    std::fs::write(
        src.join("a/c.rs"),
        "use super::*;\npub struct C;\n#[cfg(test)]\nmod tests { use crate::b::X; }\n",
    )
    .unwrap();
    std::fs::write(
        src.join("b.rs"),
        "use crate::{a::c::C, formats};\npub struct B;\n",
    )
    .unwrap();
    let circles = crate_circles(dir.path());
    assert_eq!(circles.len(), 1, "{circles:?}");
    assert!(circles[0].starts_with("circle of a, b:"), "{circles:?}");
    assert!(
        circles[0].contains("b -> a: [\"b uses crate::a::c::C\"]"),
        "{circles:?}"
    );
    assert!(
        circles[0].contains("a -> b: [\"a uses crate::b::B\"]"),
        "{circles:?}"
    );
    // Parent and child using each other is no circle; a test module's imports do not count.
    std::fs::write(src.join("b.rs"), "pub struct B;\n").unwrap();
    assert!(crate_circles(dir.path()).is_empty());
}
