//! The catalog as a web page: products grouped by OS and release, each with its architecture,
//! variant, image types, newest version and date, size, aliases, fingerprint and requirements,
//! older versions in a `<details>` element, and the commands that add this server to `incus`,
//! `lxc` (LXD) and classic LXC. Plain HTML and CSS that read well without JavaScript and on a
//! phone; a few lines of inline JavaScript add the filter box (no round trip) and copy buttons,
//! and fill in the server's address where the page does not know it (the static `index.html`).
//! Nothing is loaded from elsewhere. Every value from the tree is escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::format::{Family, ImageType, Product, ProductsFile, Version};

/// What the page says about the server it is served from. `None` for the static page, which
/// fills the address in from the browser's location.
#[derive(Clone, Debug, Default)]
pub struct ServerInfo {
    /// `https://host:port` as the browser reached it.
    pub origin: String,
    /// The TLS certificate's SHA-256 fingerprint (`AB:CD:…`), shown so a self-signed one can
    /// be checked before it is trusted.
    pub fingerprint: Option<String>,
}

/// Where the server's address goes in the static page, until the script fills it in.
const ORIGIN_PLACEHOLDER: &str = "https://this-server";

/// The page for `products`. `lxc` says whether LXC's index lists anything (the `lxc-create`
/// command is shown then).
pub fn render(products: &ProductsFile, server: Option<&ServerInfo>, lxc: bool) -> String {
    let origin = server.map_or(ORIGIN_PLACEHOLDER, |s| s.origin.as_str());
    let mut html = String::with_capacity(4096 + products.products.len() * 700);
    html.push_str(HEAD);
    let images: usize = products.products.values().map(|p| p.versions.len()).sum();
    let _ = write!(
        html,
        "<header><h1>Image server</h1><p>{} products, {} versions{}</p></header>\n<main>\n",
        products.products.len(),
        images,
        products
            .updated
            .as_deref()
            .map(|u| format!(" · published {}", esc(u)))
            .unwrap_or_default()
    );
    use_section(&mut html, origin, server, lxc);
    html.push_str(
        "<section id=\"images\"><h2>Images</h2>\n\
         <p class=\"filter\"><label for=\"filter\">Filter</label> \
         <input id=\"filter\" type=\"search\" placeholder=\"OS, release, architecture, type or alias\" autocomplete=\"off\"> \
         <span id=\"shown\"></span></p>\n",
    );
    let mut groups: BTreeMap<(String, String), Vec<(&String, &Product)>> = BTreeMap::new();
    for (id, p) in &products.products {
        groups
            .entry((p.os.to_lowercase(), p.release.clone()))
            .or_default()
            .push((id, p));
    }
    let mut last_os = None;
    for ((os_key, _), list) in &groups {
        let (_, first) = list[0];
        if last_os.as_ref() != Some(os_key) {
            if last_os.is_some() {
                html.push_str("</div>\n");
            }
            let _ = writeln!(html, "<div class=\"os\"><h3>{}</h3>", esc(&first.os));
            last_os = Some(os_key.clone());
        }
        let _ = write!(
            html,
            "<div class=\"release\"><h4>{}</h4>\n<table>\n<thead><tr><th>Aliases</th><th>Arch</th><th>Variant</th><th>Type</th><th>Newest</th><th>Size</th><th>Fingerprint</th></tr></thead>\n<tbody>\n",
            esc(&first.release_title)
        );
        for (id, p) in list {
            row(&mut html, id, p);
        }
        html.push_str("</tbody></table></div>\n");
    }
    if last_os.is_some() {
        html.push_str("</div>\n");
    }
    if groups.is_empty() {
        html.push_str("<p>No images are published yet.</p>\n");
    }
    html.push_str("</section>\n</main>\n");
    html.push_str(SCRIPT);
    html.push_str("</body>\n</html>\n");
    html
}

fn use_section(html: &mut String, origin: &str, server: Option<&ServerInfo>, lxc: bool) {
    let host = origin
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    html.push_str("<section id=\"use\"><h2>Use this server</h2>\n");
    let commands = [
        (
            "Incus",
            format!("incus remote add myimages {origin} --protocol simplestreams"),
        ),
        (
            "Incus",
            "incus launch myimages:ALIAS my-instance".to_owned(),
        ),
        (
            "LXD",
            format!("lxc remote add myimages {origin} --protocol simplestreams"),
        ),
        ("LXD", "lxc launch myimages:ALIAS my-instance".to_owned()),
    ];
    html.push_str("<dl class=\"commands\">\n");
    for (who, cmd) in &commands {
        command(html, who, cmd);
    }
    if lxc {
        command(
            html,
            "LXC",
            &format!(
                "lxc-create -n my-container -t download -- --server {host} -d OS -r RELEASE -a ARCH"
            ),
        );
    }
    html.push_str("</dl>\n<p>ALIAS is any alias below; OS, RELEASE and ARCH as the table names them (OS in lower case).</p>\n");
    if let Some(fp) = server.and_then(|s| s.fingerprint.as_deref()) {
        let _ = writeln!(
            html,
            "<p class=\"trust\">If this server's certificate is self-signed, the clients need it pinned first: save it as \
             <code>~/.config/incus/servercerts/myimages.crt</code> (or <code>~/.config/lxc/servercerts/myimages.crt</code> for LXD), e.g. with \
             <code>openssl s_client -connect {h} &lt;/dev/null | openssl x509 &gt; myimages.crt</code>, and check that its SHA-256 fingerprint \
             (<code>openssl x509 -noout -fingerprint -sha256 -in myimages.crt</code>) is <code class=\"fp\">{f}</code>.</p>",
            h = esc(host),
            f = esc(fp)
        );
    }
    html.push_str("</section>\n");
}

fn command(html: &mut String, who: &str, cmd: &str) {
    let placeholder_host = ORIGIN_PLACEHOLDER.trim_start_matches("https://");
    let text = if cmd.contains(ORIGIN_PLACEHOLDER) {
        esc(cmd).replace(
            &esc(ORIGIN_PLACEHOLDER),
            &format!("<span class=\"origin\">{}</span>", esc(ORIGIN_PLACEHOLDER)),
        )
    } else {
        esc(cmd).replace(
            &format!(" {} ", esc(placeholder_host)),
            &format!(" <span class=\"host\">{}</span> ", esc(placeholder_host)),
        )
    };
    let _ = writeln!(
        html,
        "<dt>{}</dt><dd><code class=\"cmd\">{text}</code> <button class=\"copy\" type=\"button\" hidden>Copy</button></dd>",
        esc(who)
    );
}

/// One product: its newest version in the row, the older ones folded.
fn row(html: &mut String, id: &str, p: &Product) {
    let aliases: Vec<&str> = p.aliases.split(',').filter(|a| !a.is_empty()).collect();
    let variant = p.variant.as_deref().unwrap_or("default");
    let newest = p.versions.iter().next_back();
    let summary = newest.map(|(_, v)| summarize(v)).unwrap_or_default();
    let mut types: Vec<&str> = summary.types.iter().map(|t| type_name(*t)).collect();
    if summary.lxc {
        types.push("LXC");
    }
    let search = format!(
        "{} {} {} {} {} {} {} {}",
        id,
        p.os,
        p.release,
        p.release_title,
        p.arch,
        variant,
        types.join(" "),
        aliases.join(" ")
    )
    .to_lowercase();
    let _ = write!(
        html,
        "<tr class=\"image\" data-search=\"{}\">",
        esc(&search)
    );
    let _ = write!(
        html,
        "<td data-label=\"Aliases\"><span class=\"id\">{}</span>{}</td>",
        esc(id),
        aliases
            .iter()
            .map(|a| format!(" <code class=\"alias\">{}</code>", esc(a)))
            .collect::<String>()
    );
    let _ = write!(
        html,
        "<td data-label=\"Arch\">{}</td><td data-label=\"Variant\">{}</td><td data-label=\"Type\">{}</td>",
        esc(&p.arch),
        esc(variant),
        if types.is_empty() {
            "—".to_owned()
        } else {
            types.join(", ")
        }
    );
    match newest {
        Some((name, _)) => {
            let _ = write!(
                html,
                "<td data-label=\"Newest\">{}<br><small>{}</small>{}</td>",
                esc(name.as_str()),
                name.datetime().strftime("%Y-%m-%d %H:%M UTC"),
                older(p)
            );
        }
        None => html.push_str("<td data-label=\"Newest\">—</td>"),
    }
    let _ = writeln!(
        html,
        "<td data-label=\"Size\">{}</td><td data-label=\"Fingerprint\">{}{}</td></tr>",
        summary.size.map(human).unwrap_or_else(|| "—".into()),
        summary
            .fingerprint
            .as_deref()
            .map(|f| format!(
                "<code class=\"fp\" title=\"{}\">{}</code>",
                esc(f),
                esc(&short(f))
            ))
            .unwrap_or_else(|| "—".into()),
        requirements(p)
    );
}

/// The older versions of a product, folded (a `<details>` element opens without JavaScript).
fn older(p: &Product) -> String {
    let n = p.versions.len().saturating_sub(1);
    if n == 0 {
        return String::new();
    }
    let items: String = p
        .versions
        .iter()
        .rev()
        .skip(1)
        .map(|(name, v)| {
            let s = summarize(v);
            format!(
                "<li>{}{}</li>",
                esc(name.as_str()),
                s.fingerprint
                    .as_deref()
                    .map(|f| format!(" <code class=\"fp\">{}</code>", esc(&short(f))))
                    .unwrap_or_default()
            )
        })
        .collect();
    format!("<details><summary>{n} older</summary><ul>{items}</ul></details>")
}

/// The first 12 characters of a fingerprint (a mirrored one may be any text).
fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(12).collect()
}

fn requirements(p: &Product) -> String {
    match &p.requirements {
        Some(r) if !r.is_empty() => format!(
            "<br><small>requires {}</small>",
            r.iter()
                .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    }
}

#[derive(Default)]
struct Summary {
    types: Vec<ImageType>,
    /// Of the first image (a container's, when there is one).
    fingerprint: Option<String>,
    size: Option<u64>,
    /// Classic LXC's pair is there too.
    lxc: bool,
}

/// A version's images as Incus sees them (LXD sees the same through the twins).
fn summarize(v: &Version) -> Summary {
    let mut images = super::publish::images_of(v, Family::Incus);
    images.sort_by_key(|(_, t, _, kind)| (*t, *kind));
    let mut s = Summary::default();
    for (fp, t, key, kind) in &images {
        if !s.types.contains(t) {
            s.types.push(*t);
        }
        if s.fingerprint.is_none() {
            s.fingerprint = Some(fp.clone());
            let meta = v.items.get(key).map_or(0, |i| i.size);
            let root = kind.map_or(0, |k| {
                v.items
                    .values()
                    .find(|i| i.ftype.rootfs_kind() == Some(k))
                    .map_or(0, |i| i.size)
            });
            s.size = Some(meta + root);
        }
    }
    // The pair LXC's index lists, by the one rule it is written with.
    let lxc = crate::catalog::lxc_index::lxc_pair(v);
    s.lxc = lxc.is_some();
    if let (None, Some((meta, root))) = (s.size, lxc) {
        s.size = Some(meta.size + root.size);
    }
    s
}

fn type_name(t: ImageType) -> &'static str {
    match t {
        ImageType::Container => "container",
        ImageType::VirtualMachine => "VM",
    }
}

/// `1.50 GiB`, as `list` shows sizes.
fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const HEAD: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Image server</title>
<style>
:root { color-scheme: light dark; --line: #8884; --muted: #888; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 0 1rem 2rem; }
h1 { margin: 1rem 0 0; font-size: 1.6rem; } h2 { margin-top: 1.5rem; font-size: 1.25rem; }
h3 { margin: 1.25rem 0 .25rem; } h4 { margin: .75rem 0 .25rem; color: var(--muted); }
header p, small, .id { color: var(--muted); }
code { font: .9em ui-monospace, monospace; overflow-wrap: anywhere; }
dl.commands { display: grid; grid-template-columns: max-content 1fr; gap: .25rem .75rem; }
dl.commands dt { font-weight: 600; } dl.commands dd { margin: 0; }
code.cmd { background: #8881; padding: .1rem .3rem; border-radius: 3px; }
button.copy { font-size: .8rem; }
.filter input { width: min(28rem, 100%); font-size: 1rem; padding: .3rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .35rem .5rem; border-bottom: 1px solid var(--line); }
th { font-size: .85rem; color: var(--muted); }
.id { display: block; font-size: .8rem; }
code.alias { display: inline-block; margin-right: .25rem; }
details ul { margin: .25rem 0; padding-left: 1rem; }
tr[hidden], .release[hidden], .os[hidden] { display: none; }
@media (max-width: 40rem) {
  thead { display: none; }
  table, tbody, tr, td { display: block; width: auto; }
  tr { border-bottom: 1px solid var(--line); padding: .4rem 0; }
  td { border: 0; padding: .1rem 0; }
  td::before { content: attr(data-label) ": "; color: var(--muted); font-size: .85rem; }
  dl.commands { grid-template-columns: 1fr; }
}
</style>
</head>
<body>
"#;

/// The filter (also from `#q=…` in the address), copy buttons, and the address of the server
/// where the page was written without one.
const SCRIPT: &str = r#"<script>
(function () {
  var origin = location.origin;
  if (origin && origin !== "null") {
    document.querySelectorAll(".origin").forEach(function (e) { e.textContent = origin; });
    document.querySelectorAll(".host").forEach(function (e) { e.textContent = location.host; });
  }
  var input = document.getElementById("filter"), shown = document.getElementById("shown");
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr.image"));
  function apply() {
    var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean), n = 0;
    rows.forEach(function (r) {
      var hit = terms.every(function (t) { return r.dataset.search.indexOf(t) >= 0; });
      r.hidden = !hit; if (hit) n++;
    });
    document.querySelectorAll(".release, .os").forEach(function (g) {
      g.hidden = !g.querySelector("tr.image:not([hidden])");
    });
    shown.textContent = terms.length ? n + " of " + rows.length + " shown" : "";
  }
  input.addEventListener("input", apply);
  var m = /[#&]q=([^&]*)/.exec(location.hash);
  if (m) { input.value = decodeURIComponent(m[1]); }
  apply();
  document.querySelectorAll("button.copy").forEach(function (b) {
    if (!navigator.clipboard) { return; }
    b.hidden = false;
    b.addEventListener("click", function () {
      navigator.clipboard.writeText(b.previousElementSibling.textContent).then(function () {
        b.textContent = "Copied"; setTimeout(function () { b.textContent = "Copy"; }, 1500);
      });
    });
  });
})();
</script>
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Ftype, Item, VersionName};

    fn product(os: &str, title: &str, aliases: &str) -> Product {
        let mut v = Version::default();
        let mut meta = Item::new(
            Ftype::Meta(Family::Incus),
            "p/v/incus.tar.xz".into(),
            "m".into(),
            100,
        );
        meta.set_combined(crate::format::RootfsKind::Squashfs, Some("f".repeat(64)));
        v.items.insert("incus.tar.xz".into(), Box::new(meta));
        v.items.insert(
            "root.squashfs".into(),
            Box::new(Item::new(
                Ftype::Squashfs,
                "p/v/rootfs.squashfs".into(),
                "r".into(),
                2048,
            )),
        );
        Product {
            aliases: aliases.into(),
            arch: "amd64".into(),
            lxd_requirements: None,
            os: os.into(),
            release: "1".into(),
            release_codename: None,
            release_title: title.into(),
            requirements: None,
            support_eol: None,
            variant: None,
            version: None,
            versions: [
                (VersionName::parse("20240101_0000").unwrap(), v.clone()),
                (VersionName::parse("20240102_0000").unwrap(), v),
            ]
            .into(),
        }
    }

    fn file(products: Vec<(&str, Product)>) -> ProductsFile {
        ProductsFile {
            content_id: "images".into(),
            datatype: "image-downloads".into(),
            format: "products:1.0".into(),
            products: products
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            updated: None,
        }
    }

    #[test]
    fn values_from_the_tree_are_escaped() {
        let page = render(
            &file(vec![(
                "evil:1:amd64:default",
                product("<script>alert(1)</script>", "One \"quoted\" & <b>", "a/<i>"),
            )]),
            None,
            false,
        );
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("One &quot;quoted&quot; &amp; &lt;b&gt;"));
        assert!(page.contains("a/&lt;i&gt;"));
        // One script: ours.
        assert_eq!(page.matches("<script>").count(), 1);
    }

    /// A mirrored catalog's fingerprints are upstream text: any of it renders.
    #[test]
    fn odd_fingerprints_do_not_break_the_page() {
        let mut p = product("Odd", "1", "odd");
        for v in p.versions.values_mut() {
            let meta = v.items.get_mut("incus.tar.xz").unwrap();
            meta.set_combined(crate::format::RootfsKind::Squashfs, Some("aé€".repeat(9)));
        }
        let page = render(&file(vec![("odd:1:amd64:default", p)]), None, false);
        assert!(page.contains("aé€aé€aé€aé€"));
    }

    #[test]
    fn the_page_lists_products_and_the_commands_for_this_server() {
        let page = render(
            &file(vec![
                (
                    "debian:12:amd64:default",
                    product("Debian", "12", "debian/12"),
                ),
                (
                    "alpine:3:amd64:default",
                    product("Alpine", "3", "alpine/3,alpine"),
                ),
            ]),
            Some(&ServerInfo {
                origin: "https://images.example:8443".into(),
                fingerprint: Some("AB:CD".into()),
            }),
            true,
        );
        for needle in [
            "incus remote add myimages https://images.example:8443 --protocol simplestreams",
            "lxc remote add myimages https://images.example:8443 --protocol simplestreams",
            "--server images.example:8443",
            "AB:CD",
            "<code class=\"alias\">alpine</code>",
            "debian/12",
            "1 older",
            "2.10 KiB",
            "2024-01-02 00:00 UTC",
        ] {
            assert!(page.contains(needle), "{needle}");
        }
        // Grouped by OS, in order.
        assert!(page.find("<h3>Alpine</h3>").unwrap() < page.find("<h3>Debian</h3>").unwrap());
        // Without a server: a placeholder the script replaces, and no certificate advice.
        let page = render(&file(vec![]), None, false);
        assert!(page.contains("<span class=\"origin\">https://this-server</span>"));
        assert!(!page.contains("fingerprint"));
        assert!(!page.contains("lxc-create"));
    }
}
