//! No blocking work on the daemons' runtimes.
//!
//! agent and netd serve on 2-thread tokio runtimes: a file write, an fsync
//! or a host command run inside async code stalls every task of its thread.
//! This test reads their sources and fails on any such call in async code
//! (an `async fn`, an `async` block) outside a blocking task, made directly
//! or through the crate's own sync functions, however deep.
//!
//! How a call is matched:
//! - a path call by its path, `use` declarations followed: `fs::write` in a
//!   file that uses `std::fs` is `std::fs::write`, and `keys::ss58` is the
//!   fn `ss58` of the module `keys` or of the type `keys`;
//! - a method call on `self` by the impl it is written in; on anything else
//!   by its name, among the crate's methods, unless the name is also a
//!   method of the standard library's types ([`AMBIGUOUS_METHODS`]), where the
//!   receiver's type cannot be told from the source;
//! - a call whose value is awaited is the async version (`tokio::fs`,
//!   `tokio::process`) and is fine.
//!
//! Closures handed to the calls in [`OFF_RUNTIME`] run on a blocking
//! thread and are not looked into; an `async` block handed to them is async
//! code again. Tests (`#[cfg(test)]`) are not looked at.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// The daemons this holds for, as their source folders.
const CRATES: &[&str] = &["agent", "netd"];

/// Calls that write files, sync them, or run host commands.
const BLOCKING_PATHS: &[&str] = &[
    "std::fs::write",
    "std::fs::rename",
    "std::fs::remove_file",
    "std::fs::remove_dir",
    "std::fs::remove_dir_all",
    "std::fs::create_dir",
    "std::fs::create_dir_all",
    "std::fs::copy",
    "std::fs::hard_link",
    "std::fs::set_permissions",
    "std::fs::File::create",
    "std::fs::OpenOptions::new",
    "std::os::unix::fs::symlink",
    "std::process::Command::output",
    "std::process::Command::status",
    "std::process::Command::spawn",
    "grove_daemon::fsutil::write_atomic",
    "grove_daemon::fsutil::write_tree",
    "grove_daemon::fsutil::ensure_dir",
    "grove_daemon::cmd::run",
    "grove_daemon::cmd::run_with_input",
    "grove_daemon::cmd::output",
];

/// Methods that sync a file to its disk.
const BLOCKING_METHODS: &[&str] = &["sync_all", "sync_data"];

/// `std::process::Command`'s methods that run it, on a command built in the
/// same expression or held in a local of the same fn (tokio's are awaited,
/// and its `Command` is another path).
const RUN_METHODS: &[&str] = &["output", "status", "spawn"];
const STD_COMMAND: &str = "std::process::Command::new";

/// Calls that run the closures handed to them on a blocking thread: tokio's
/// and std's, then the daemons' own helpers (each checked to exist below).
const OFF_RUNTIME: &[&str] = &[
    "spawn_blocking",
    "block_in_place",
    "spawn",
    // netd: actor.rs and its mesh and tenant wrappers; agent: chain/mod.rs.
    "blocking",
    // netd: netns.rs, a thread inside a network namespace.
    "run_in_async",
    // netd: tenant/build.rs, through `run_in_async` or `blocking`.
    "inside",
    "on_device",
    // agent: registry/embedded.rs, a signed write's change on the blocking
    // pool.
    "write",
    "signed",
    // agent: upgrade/mod.rs, work on the mounted stick.
    "on_stick",
    "signed_on",
];

/// The daemons' own helpers of [`OFF_RUNTIME`]: where each is defined.
const OWN_HELPERS: &[(&str, &str)] = &[
    ("netd/src/actor.rs", "blocking"),
    ("netd/src/mesh/mod.rs", "blocking"),
    ("netd/src/tenant/mod.rs", "blocking"),
    ("agent/src/chain/mod.rs", "blocking"),
    ("netd/src/netns.rs", "run_in_async"),
    ("netd/src/tenant/build.rs", "inside"),
    ("netd/src/tenant/build.rs", "on_device"),
    ("agent/src/registry/embedded.rs", "write"),
    ("agent/src/registry/embedded.rs", "signed"),
    ("agent/src/registry/embedded.rs", "signed_on"),
    ("agent/src/upgrade/mod.rs", "on_stick"),
];

/// Names the daemons' own blocking methods share with other types'
/// methods of the same arity (`BTreeSet::remove`, `Vec::push`, ed25519's
/// `sign` and `verify`, axum's `delete` and `route`): a call of one of them
/// on anything but `self` is taken for the other type's. Elsewhere a method
/// call is matched by its name and arity.
const AMBIGUOUS_METHODS: &[&str] = &["remove", "push", "sign", "verify", "delete", "route"];

#[test]
fn no_file_write_fsync_or_command_in_async_code_of_agent_or_netd() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut found = Vec::new();
    let mut async_fns = 0;
    for krate in CRATES {
        let files = sources(&workspace.join(krate).join("src"));
        assert!(!files.is_empty(), "no sources under {krate}/src");
        let parsed: Vec<Source> = files.iter().map(|f| Source::read(&workspace, f)).collect();
        for (file, name) in OWN_HELPERS.iter().filter(|(f, _)| f.starts_with(krate)) {
            let source = parsed.iter().find(|s| s.rel == *file);
            assert!(
                source.is_some_and(|s| s.fns.iter().any(|f| f.name == *name)),
                "{file} has no fn {name}: update OFF_RUNTIME"
            );
        }
        let crate_fns: Vec<&Fn> = parsed.iter().flat_map(|s| &s.fns).collect();
        let blocking_fns = blocking_closure(&crate_fns);
        for source in &parsed {
            for f in &source.fns {
                async_fns += usize::from(f.is_async);
                for call in &f.in_async {
                    if let Some(why) = blocks(call, &blocking_fns) {
                        found.push(format!("{}: {}: {why}", source.rel, f.name));
                    }
                }
            }
        }
    }
    assert!(
        async_fns > 100,
        "only {async_fns} async fns read: the scan lost its way"
    );
    assert!(
        found.is_empty(),
        "blocking calls in async code:\n{}",
        found.join("\n")
    );
}

/// The scan's own check: it finds what it must, in each way it can be
/// hidden, and passes over what runs off the runtime or is awaited.
#[test]
fn the_scan_finds_direct_nested_and_indirect_blocking_calls() {
    let code = r#"
        use std::fs;
        use grove_daemon::fsutil;
        use tokio::process::Command as Async;
        fn helper() { deeper() }
        fn deeper() { fsutil::write_atomic(p, b, 0o600).unwrap(); }
        fn harmless() -> u32 { 1 }
        struct Queue;
        impl Queue {
            fn save(&self) { std::fs::File::create("/q").unwrap(); }
            fn push(&self) { self.save() }
            async fn push_now(&self) { self.push() }
            async fn push_to_vec(&self, v: &mut Vec<u32>) { v.push(1) }
        }
        async fn direct() { fs::write("/x", "y").unwrap(); }
        async fn through_helper() { let _ = harmless(); helper(); }
        async fn fsync(f: std::fs::File) { f.sync_all().unwrap(); }
        async fn in_select() { tokio::select! { _ = tick() => { helper() } } }
        async fn method(q: Queue) { q.save() }
        fn spawner() { tokio::spawn(async move { std::process::Command::new("ip").status(); }); }
        async fn spawns(c: std::process::Command) { tokio::task::spawn_blocking(move || c.spawn()).await; }
        async fn runs() {
            let mut c = std::process::Command::new("nft");
            c.arg("-f");
            c.status().unwrap();
        }
        async fn waits(shutdown: Shutdown) { tokio::select! { _ = shutdown.wait() => {} } }
        fn threads() { std::thread::spawn(move || helper()); }
        async fn fine() {
            tokio::fs::write("/x", "y").await.unwrap();
            Async::new("ip").status().await.unwrap();
            tokio::task::spawn_blocking(move || fs::write("/x", "y")).await.unwrap();
            crate::actor::blocking(move || { helper(); Ok(()) }).await.unwrap();
            let _ = harmless();
        }
        #[cfg(test)]
        mod tests {
            #[tokio::test]
            async fn a_test_may_block() { std::fs::write("/t", "").unwrap(); }
        }
    "#;
    let source = Source::parse("example/src/example.rs", code);
    let fns: Vec<&Fn> = source.fns.iter().collect();
    let blocking_fns = blocking_closure(&fns);
    let blocking_names: BTreeSet<&str> = blocking_fns.keys().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        blocking_names,
        BTreeSet::from(["deeper", "helper", "save", "push"])
    );
    let flagged: BTreeSet<&str> = source
        .fns
        .iter()
        .filter(|f| {
            f.in_async
                .iter()
                .any(|c| blocks(c, &blocking_fns).is_some())
        })
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        flagged,
        BTreeSet::from([
            "push_now",
            "direct",
            "through_helper",
            "fsync",
            "in_select",
            "method",
            "spawner",
            "runs"
        ])
    );
}

/// A call, as the scan sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    /// A path call: its resolved path, and the module or type it names (the
    /// caller's own for a one-segment path).
    Path { path: String, owner: String },
    /// A method call: its name, how many arguments it is given, and the
    /// impl's type when made on `self`.
    Method {
        name: String,
        args: usize,
        on_self: Option<String>,
    },
}

impl Call {
    fn describe(&self) -> String {
        match self {
            Call::Path { path, .. } => format!("{path}()"),
            Call::Method { name, .. } => format!(".{name}()"),
        }
    }
}

/// A fn with a body, and what it calls.
#[derive(Debug)]
struct Fn {
    /// The type of its impl, else its module.
    owner: String,
    name: String,
    /// How many arguments it takes, `self` left out.
    arity: usize,
    is_async: bool,
    /// Calls made in async code (off-runtime closures left out).
    in_async: Vec<Call>,
    /// Calls made in sync code (off-runtime closures left out).
    in_sync: Vec<Call>,
}

struct Source {
    rel: String,
    fns: Vec<Fn>,
}

impl Source {
    fn read(workspace: &Path, path: &Path) -> Self {
        let text = std::fs::read_to_string(path).expect("a source file reads");
        let rel = path
            .strip_prefix(workspace)
            .expect("a source inside the workspace")
            .display()
            .to_string();
        Self::parse(&rel, &text)
    }

    fn parse(rel: &str, text: &str) -> Self {
        let file = syn::parse_file(text).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let mut uses = BTreeMap::new();
        for item in &file.items {
            collect_uses(item, &mut uses);
        }
        let path = Path::new(rel);
        let stem = path
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .to_string();
        let module = match stem.as_str() {
            "mod" => parent_name(path),
            "lib" | "main" => "crate".to_string(),
            _ => stem,
        };
        let parent = match path
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .as_ref()
        {
            "mod" => parent_name(path.parent().expect("a folder")),
            _ => parent_name(path),
        };
        let mut fns = FnCollector {
            uses: &uses,
            module,
            parent,
            owner: None,
            fns: Vec::new(),
        };
        fns.visit_file(&file);
        Self {
            rel: rel.to_string(),
            fns: fns.fns,
        }
    }
}

/// The name of the folder `path` is in, `crate` for a crate's `src`.
fn parent_name(path: &Path) -> String {
    let parent = path
        .parent()
        .and_then(Path::file_name)
        .expect("a source below a folder")
        .to_string_lossy();
    if parent == "src" {
        "crate".to_string()
    } else {
        parent.to_string()
    }
}

/// Every `.rs` file below `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a source folder reads") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The crate's fns that block, by (owner, name), with why: those that make
/// a blocking call, and those that call one of them, to any depth. An async
/// fn that blocks is reported itself, and blocks no caller of its own.
type Blocking = BTreeMap<(String, String), (usize, String)>;

fn blocking_closure(fns: &[&Fn]) -> Blocking {
    let mut blocking = Blocking::new();
    loop {
        let before = blocking.len();
        for f in fns.iter().filter(|f| !f.is_async) {
            let key = (f.owner.clone(), f.name.clone());
            if blocking.contains_key(&key) {
                continue;
            }
            if let Some(why) = f.in_sync.iter().find_map(|c| blocks(c, &blocking)) {
                blocking.insert(key, (f.arity, why));
            }
        }
        if blocking.len() == before {
            return blocking;
        }
    }
}

/// Why `call` blocks, if it does.
fn blocks(call: &Call, blocking: &Blocking) -> Option<String> {
    let primitive = match call {
        Call::Path { path, .. } => BLOCKING_PATHS.contains(&path.as_str()),
        Call::Method { name, .. } => BLOCKING_METHODS.contains(&name.as_str()),
    };
    if primitive {
        return Some(format!("calls {}", call.describe()));
    }
    let why = match call {
        Call::Path { path, owner } => {
            let name = path.rsplit("::").next().unwrap_or(path);
            blocking.get(&(owner.clone(), name.to_string()))
        }
        Call::Method {
            name,
            on_self: Some(owner),
            ..
        } => blocking.get(&(owner.clone(), name.clone())),
        Call::Method {
            name,
            args,
            on_self: None,
        } if !AMBIGUOUS_METHODS.contains(&name.as_str()) => blocking
            .iter()
            .find(|((_, n), (arity, _))| n == name && arity == args)
            .map(|(_, why)| why),
        Call::Method { .. } => None,
    }
    .map(|(_, why)| why)?;
    Some(format!("calls {}, which {why}", call.describe()))
}

/// `use` declarations: the name each brings in, to the path it stands for.
fn collect_uses(item: &syn::Item, uses: &mut BTreeMap<String, String>) {
    fn walk(tree: &syn::UseTree, prefix: &str, uses: &mut BTreeMap<String, String>) {
        let join = |s: &str| {
            if prefix.is_empty() {
                s.to_string()
            } else {
                format!("{prefix}::{s}")
            }
        };
        match tree {
            syn::UseTree::Path(p) => walk(&p.tree, &join(&p.ident.to_string()), uses),
            syn::UseTree::Name(n) if n.ident == "self" => {
                let last = prefix.rsplit("::").next().unwrap_or(prefix);
                uses.insert(last.to_string(), prefix.to_string());
            }
            syn::UseTree::Name(n) => {
                uses.insert(n.ident.to_string(), join(&n.ident.to_string()));
            }
            syn::UseTree::Rename(r) => {
                uses.insert(r.rename.to_string(), join(&r.ident.to_string()));
            }
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| walk(t, prefix, uses)),
            syn::UseTree::Glob(_) => {}
        }
    }
    match item {
        syn::Item::Use(u) => walk(&u.tree, "", uses),
        syn::Item::Mod(m) if !is_test(&m.attrs) => {
            for item in m.content.iter().flat_map(|(_, items)| items) {
                collect_uses(item, uses);
            }
        }
        _ => {}
    }
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let path = a.path();
        path.is_ident("test")
            || path.segments.last().is_some_and(|s| s.ident == "test")
            || (path.is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
    })
}

/// Collects every fn with a body: free, in impls, in traits.
struct FnCollector<'a> {
    uses: &'a BTreeMap<String, String>,
    module: String,
    parent: String,
    owner: Option<String>,
    fns: Vec<Fn>,
}

impl FnCollector<'_> {
    fn add(&mut self, attrs: &[syn::Attribute], sig: &syn::Signature, block: &syn::Block) {
        if is_test(attrs) {
            return;
        }
        let is_async = sig.asyncness.is_some();
        let owner = self.owner.clone().unwrap_or_else(|| self.module.clone());
        let mut calls = CallCollector {
            uses: self.uses,
            module: &self.module,
            parent: &self.parent,
            owner: &owner,
            in_async: is_async,
            off_runtime: 0,
            awaited: BTreeSet::new(),
            commands: BTreeSet::new(),
            in_async_calls: Vec::new(),
            in_sync_calls: Vec::new(),
        };
        calls.visit_block(block);
        let (in_async, in_sync) = (calls.in_async_calls, calls.in_sync_calls);
        self.fns.push(Fn {
            owner,
            name: sig.ident.to_string(),
            arity: sig
                .inputs
                .iter()
                .filter(|i| matches!(i, syn::FnArg::Typed(_)))
                .count(),
            is_async,
            in_async,
            in_sync,
        });
    }
}

impl<'ast> Visit<'ast> for FnCollector<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if is_test(&i.attrs) {
            return;
        }
        let owner = match &*i.self_ty {
            syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        let was = std::mem::replace(&mut self.owner, owner);
        syn::visit::visit_item_impl(self, i);
        self.owner = was;
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.add(&f.attrs, &f.sig, &f.block);
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.add(&f.attrs, &f.sig, &f.block);
    }
    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(block) = &f.default {
            self.add(&f.attrs, &f.sig, block);
        }
    }
}

/// Collects the calls of one fn body, each as made in async or sync code.
struct CallCollector<'a> {
    uses: &'a BTreeMap<String, String>,
    module: &'a str,
    parent: &'a str,
    owner: &'a str,
    in_async: bool,
    /// Inside a closure that runs off the runtime.
    off_runtime: usize,
    /// Calls whose value is awaited, by the address of their node.
    awaited: BTreeSet<usize>,
    /// Locals that hold a `std::process::Command`.
    commands: BTreeSet<String>,
    in_async_calls: Vec<Call>,
    in_sync_calls: Vec<Call>,
}

impl CallCollector<'_> {
    fn record<T>(&mut self, call: Call, node: &T) {
        if self.off_runtime > 0 || self.awaited.contains(&address(node)) {
            return;
        }
        if self.in_async {
            self.in_async_calls.push(call);
        } else {
            self.in_sync_calls.push(call);
        }
    }

    /// The full path of a call, and the module or type it names.
    fn resolve(&self, path: &syn::Path) -> (String, String) {
        let mut segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if path.leading_colon.is_none()
            && let Some(full) = self.uses.get(&segments[0])
        {
            let mut resolved: Vec<String> = full.split("::").map(str::to_string).collect();
            resolved.extend(segments.drain(1..));
            segments = resolved;
        }
        let owner = match segments.len() {
            1 => self.module.to_string(),
            n => match segments[n - 2].as_str() {
                "Self" => self.owner.to_string(),
                "self" => self.module.to_string(),
                "super" => self.parent.to_string(),
                other => other.to_string(),
            },
        };
        (segments.join("::"), owner)
    }

    /// Marks the call chain under an `.await` as awaited: the awaited call
    /// and the receivers and builders it was made from.
    fn mark_awaited(&mut self, mut expr: &syn::Expr) {
        loop {
            match expr {
                syn::Expr::MethodCall(m) => {
                    self.awaited.insert(address(m));
                    expr = &m.receiver;
                }
                syn::Expr::Call(c) => {
                    self.awaited.insert(address(c));
                    return;
                }
                syn::Expr::Paren(p) => expr = &p.expr,
                syn::Expr::Try(t) => expr = &t.expr,
                _ => return,
            }
        }
    }

    /// Whether `expr` is a `std::process::Command`: one being built from
    /// `Command::new`, or a local that holds one.
    fn is_command(&self, mut expr: &syn::Expr) -> bool {
        loop {
            match expr {
                syn::Expr::MethodCall(m) => expr = &m.receiver,
                syn::Expr::Reference(r) => expr = &r.expr,
                syn::Expr::Paren(p) => expr = &p.expr,
                syn::Expr::Call(c) => {
                    return matches!(&*c.func, syn::Expr::Path(p) if self.resolve(&p.path).0 == STD_COMMAND);
                }
                syn::Expr::Path(p) => {
                    return p
                        .path
                        .get_ident()
                        .is_some_and(|i| self.commands.contains(&i.to_string()));
                }
                _ => return false,
            }
        }
    }

    fn nested(&mut self, in_async: bool, off_runtime: bool, visit: impl FnOnce(&mut Self)) {
        let was = self.in_async;
        self.in_async = in_async;
        self.off_runtime += usize::from(off_runtime);
        visit(self);
        self.off_runtime -= usize::from(off_runtime);
        self.in_async = was;
    }
}

impl<'ast> Visit<'ast> for CallCollector<'_> {
    fn visit_expr_await(&mut self, e: &'ast syn::ExprAwait) {
        self.mark_awaited(&e.base);
        syn::visit::visit_expr_await(self, e);
    }

    fn visit_expr_call(&mut self, e: &'ast syn::ExprCall) {
        let mut off_runtime = false;
        if let syn::Expr::Path(p) = &*e.func {
            let (path, owner) = self.resolve(&p.path);
            let name = path.rsplit("::").next().unwrap_or(&path);
            off_runtime = OFF_RUNTIME.contains(&name);
            self.record(Call::Path { path, owner }, e);
        }
        self.visit_expr(&e.func);
        for arg in &e.args {
            self.nested(self.in_async, off_runtime, |this| this.visit_expr(arg));
        }
    }

    fn visit_local(&mut self, l: &'ast syn::Local) {
        if let syn::Pat::Ident(p) = strip_type(&l.pat)
            && let Some(init) = &l.init
            && self.is_command(&init.expr)
        {
            self.commands.insert(p.ident.to_string());
        }
        syn::visit::visit_local(self, l);
    }

    fn visit_expr_method_call(&mut self, e: &'ast syn::ExprMethodCall) {
        let name = e.method.to_string();
        if RUN_METHODS.contains(&name.as_str()) && self.is_command(&e.receiver) {
            let path = format!("std::process::Command::{name}");
            self.record(
                Call::Path {
                    path,
                    owner: "Command".into(),
                },
                e,
            );
        }
        let args = e.args.len();
        let on_self = matches!(&*e.receiver, syn::Expr::Path(p) if p.path.is_ident("self"))
            .then(|| self.owner.to_string());
        let off_runtime = OFF_RUNTIME.contains(&name.as_str());
        self.record(
            Call::Method {
                name,
                args,
                on_self,
            },
            e,
        );
        self.visit_expr(&e.receiver);
        for arg in &e.args {
            self.nested(self.in_async, off_runtime, |this| this.visit_expr(arg));
        }
    }

    fn visit_expr_async(&mut self, e: &'ast syn::ExprAsync) {
        // An async block is async code wherever it is written, even inside
        // a closure that otherwise runs off the runtime.
        let off = std::mem::take(&mut self.off_runtime);
        self.nested(true, false, |this| syn::visit::visit_expr_async(this, e));
        self.off_runtime = off;
    }

    fn visit_expr_closure(&mut self, e: &'ast syn::ExprClosure) {
        let is_async = self.in_async || e.asyncness.is_some();
        self.nested(is_async, false, |this| {
            syn::visit::visit_expr_closure(this, e)
        });
    }

    /// A macro's arguments are read as the expressions they hold, split at
    /// the top level's `,`, `;`, `=` and `=>` (`format!`, `assert!`,
    /// `tokio::select!`, `tokio::join!`); what does not parse is passed
    /// over.
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        for chunk in macro_chunks(m.tokens.clone()) {
            if let Ok(expr) = syn::parse2::<syn::Expr>(chunk) {
                // Kept for the whole scan, so that no node's address is
                // reused while `awaited` may hold it.
                let expr: &'static syn::Expr = Box::leak(Box::new(expr));
                self.visit_expr(expr);
            }
        }
    }

    // Items nested in a body are fns of their own, collected separately.
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

fn strip_type(pat: &syn::Pat) -> &syn::Pat {
    match pat {
        syn::Pat::Type(t) => &t.pat,
        other => other,
    }
}

fn address<T>(node: &T) -> usize {
    std::ptr::from_ref(node) as usize
}

/// A macro's tokens, split at the top level's `,`, `;`, `=` and `=>`.
fn macro_chunks(tokens: proc_macro2::TokenStream) -> Vec<proc_macro2::TokenStream> {
    use proc_macro2::{Spacing, TokenTree};
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let punct = |i: usize| match tokens.get(i) {
        Some(TokenTree::Punct(p)) => Some((p.as_char(), p.spacing())),
        _ => None,
    };
    let mut chunks = vec![Vec::new()];
    for (i, token) in tokens.iter().enumerate() {
        let before = i.checked_sub(1).and_then(punct);
        let split = match punct(i) {
            Some((',' | ';', _)) => true,
            // `=` alone or the `=` of `=>`; not `==`, `<=`, `!=`, `+=`.
            Some(('=', spacing)) => {
                let joined_before = matches!(before, Some((_, Spacing::Joint)));
                let joined_after =
                    spacing == Spacing::Joint && matches!(punct(i + 1), Some(('=', _)));
                !joined_before && !joined_after
            }
            // The `>` of `=>`: its `=` split already.
            Some(('>', _)) => matches!(before, Some(('=', Spacing::Joint))),
            _ => false,
        };
        if split {
            chunks.push(Vec::new());
        } else {
            chunks
                .last_mut()
                .expect("one chunk at least")
                .push(token.clone());
        }
    }
    chunks
        .into_iter()
        .filter(|c| !c.is_empty())
        .map(|c| c.into_iter().collect())
        .collect()
}
