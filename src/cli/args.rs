//! The command line: clap definitions only, with the original tool's names and flags so that
//! existing Mottainai task files keep working.
// The field docs are clap's `--help` text, where `<os>` is a placeholder, not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::FalseyValueParser;
use clap::{Args, CommandFactory, Parser, Subcommand};

/// Build, publish and serve LXD and Incus image trees over simplestreams.
///
/// Order of work: build-product (or copy images in) → publish (manifests, images.json,
/// index.json) → serve. The older steps build-versions-manifest → build-images-file →
/// build-index do the same as publish, one at a time.
#[derive(Debug, Parser)]
#[command(name = "simplestreams-builder", version, about, max_term_width = 100)]
pub struct Cli {
    /// tree.yml to use (default: ./tree.yml when it exists; without one, the
    /// images/<os>/<release>/<arch>/<variant>/<version>/ layout is scanned)
    #[arg(
        short = 'c',
        long = "config",
        env = "SSBUILDER_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Tree to write (and, without -s, to read)
    #[arg(short = 't', long = "target-dir", global = true, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
    /// API key sent as `Authorization: token KEY` to prefix_path servers
    #[arg(
        short = 'k',
        long = "apikey",
        env = "SSBUILDER_APIKEY",
        global = true,
        hide_env_values = true
    )]
    pub apikey: Option<String>,
    /// Sign what is published with this OpenPGP secret key (ASCII-armoured; a passphrase comes
    /// from SSB_SIGN_KEY_PASSPHRASE): index.sjson and images.sjson for python-simplestreams,
    /// .asc signatures of LXC's index and files. See `keygen`
    #[arg(long, env = "SSB_SIGN_KEY_FILE", global = true, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Give each new version xdelta3 deltas from this many earlier versions, for products that
    /// do not set `deltas:` (tree.yml's top-level `deltas:` otherwise; 0: none)
    #[arg(long, env = "SSBUILDER_DELTAS", global = true, value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=16))]
    pub deltas: Option<u32>,
    /// Publish a delta only when it is at most this share of the full squashfs (default 60)
    #[arg(long, env = "SSBUILDER_DELTA_MAX_PERCENT", global = true, value_name = "PERCENT",
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub delta_max_percent: Option<u8>,
    /// Allow a plain-http S3 endpoint (AWS_ENDPOINT_URL) that is not loopback: credentials and
    /// images then cross the network in the clear
    #[arg(long, global = true)]
    pub s3_allow_http: bool,
    /// Debug output (also: DEBUG=1)
    #[arg(short = 'v', long = "verbose", global = true)]
    pub verbose: bool,
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build one product with distrobuilder into a new version, publish it, purge old versions
    BuildProduct(BuildProductArgs),
    /// Hash every product and write ssb.json files, images.json and index.json in one go
    Publish(PublishArgs),
    /// Hash one product's versions into its ssb.json
    BuildVersionsManifest(ManifestArgs),
    /// Write streams/v1/images.json from the products' ssb.json files
    BuildImagesFile(CatalogArgs),
    /// Write streams/v1/index.json from the products' ssb.json files
    BuildIndex(CatalogArgs),
    /// Print the effective configuration
    Print,
    /// Import exported or built images (split or unified) into the layout and publish
    Import(ImportArgs),
    /// Re-hash every published item (sizes, sha256, fingerprints) and find unreferenced files
    Verify(InventoryArgs),
    /// Delete image files and version folders the catalog no longer references (dry run
    /// unless --yes)
    Prune(PruneArgs),
    /// List the published images
    List(InventoryArgs),
    /// Serve the tree over HTTPS (TLS 1.3) for incus, lxc and simplestreams clients
    Serve(ServeArgs),
    /// Make a demo tree with a container image built in-process, publish it and serve it
    Demo(DemoArgs),
    /// Pull images from a simplestreams server into a local mirror (-t), or push a tree out
    #[command(subcommand)]
    Mirror(MirrorCommand),
    /// Make an OpenPGP signing key for --sign-key, and its public key for clients
    Keygen(KeygenArgs),
    /// Manage the readers of a private server (serve --read-users FILE)
    #[command(subcommand)]
    Users(UsersCommand),
}

/// `users add`, `users list`, `users remove`.
#[derive(Clone, Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a reader and print its fresh token (only once: the file keeps its hash)
    Add {
        /// The user's name (the USER of https://USER:TOKEN@HOST)
        name: String,
        /// The users file (created when missing)
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Products the user may see: ids or globs such as `debian:*` (repeatable; default `*`)
        #[arg(long = "products", value_name = "GLOB")]
        products: Vec<String>,
    },
    /// List the readers and what they may see
    List {
        /// The users file
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Remove a reader
    Remove {
        /// The user's name
        name: String,
        /// The users file
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
}

/// `keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Folder to write signing-key.asc (secret), signing-key.pub.asc and signing-key.pub.gpg
    /// (the public key, armoured and as a keyring for gpgv and sstream-query --keyring)
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub out: PathBuf,
    /// The key's user id
    #[arg(long, default_value = "simplestreams-builder signing key")]
    pub user_id: String,
}

/// `mirror pull` and `mirror push`.
#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// Download selected images (with their metadata/rootfs partners) from a simplestreams
    /// server into -t DIR, verified, and publish them there as our own catalog
    Pull(MirrorPullArgs),
    /// Copy the tree at -t DIR to a folder or an rsync/ssh destination: image files first,
    /// the catalog last, removals after that
    Push(MirrorPushArgs),
}

/// `mirror pull`.
#[derive(Debug, Args)]
pub struct MirrorPullArgs {
    /// The remote, as for `incus remote add` (default: the `mirrors:` of tree.yml)
    #[arg(value_name = "URL")]
    pub url: Option<String>,
    /// Only products of this os (repeatable; case-insensitive)
    #[arg(long, value_name = "OS")]
    pub os: Vec<String>,
    /// Only products of this release (repeatable; case-insensitive)
    #[arg(long, value_name = "RELEASE")]
    pub release: Vec<String>,
    /// Only products of this architecture (repeatable; amd64 and x86_64 are the same)
    #[arg(long, value_name = "ARCH")]
    pub arch: Vec<String>,
    /// Only products of this variant (repeatable; case-insensitive)
    #[arg(long, value_name = "VARIANT")]
    pub variant: Vec<String>,
    /// Only products with an alias matching this glob (`*`, `?`; repeatable)
    #[arg(long, value_name = "GLOB")]
    pub alias: Vec<String>,
    /// Only container or only VM images: container, vm
    #[arg(long = "type", value_name = "TYPE", value_parser = simplestreams_builder::config::parse_image_type)]
    pub image_type: Option<simplestreams_builder::format::ImageType>,
    /// Keep the newest N versions of each product (default: every version upstream lists)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep: Option<u32>,
    /// Do not fetch the deltas (squashfs.vcdiff) between the versions kept
    #[arg(long)]
    pub no_deltas: bool,
    /// Downloads at once
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Also trust this CA certificate (PEM; repeatable). SSL_CERT_FILE is honoured too
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_cert: Vec<PathBuf>,
    /// Do not verify the server's TLS certificate (the sha256 of every file is still checked)
    #[arg(long)]
    pub insecure: bool,
}

/// `mirror push`.
#[derive(Debug, Args)]
pub struct MirrorPushArgs {
    /// A folder, or an rsync destination (`host:path`, `user@host:path`, `rsync://…`)
    #[arg(value_name = "DEST")]
    pub dest: String,
}

/// `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Tree to read images from (default: the target dir)
    #[arg(short = 's', long = "source-dir", value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// Also compute md5 of every item
    #[arg(long)]
    pub md5: bool,
    /// Leave out products whose manifest cannot be loaded, with a warning, instead of failing
    /// (a product whose ssb.json does not exist yet is always left out, with a warning)
    #[arg(long, env = "SSBUILDER_SKIP_UNAVAILABLE", value_parser = FalseyValueParser::new())]
    pub skip_unavailable: bool,
    /// Replace the published catalog even when the new one keeps none of its products (the
    /// sign of the wrong mode or tree.yml)
    #[arg(long)]
    pub force: bool,
}

/// `build-product`.
#[derive(Debug, Args)]
pub struct BuildProductArgs {
    /// Product name
    pub product: String,
    /// Folder holding `<directory>/<image file>` or `<image file>` (default: .)
    #[arg(short = 's', long = "source-dir", value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// distrobuilder definition file name (default: the product's image_file, else image.yaml)
    #[arg(short = 'i', long = "image-filename", value_name = "IMAGE_YAML")]
    pub image_file: Option<PathBuf>,
    /// Do not build the LXC image (meta.tar.xz + rootfs.tar.xz)
    #[arg(long)]
    pub skip_lxc: bool,
    /// Do not build the Incus/LXD images (metadata + squashfs, and the VM when `vm: true`)
    #[arg(long)]
    pub skip_lxd: bool,
    /// Do not delete old versions
    #[arg(long)]
    pub skip_purge: bool,
    /// Keep the partial folder of a failed build, for debugging
    #[arg(long)]
    pub keep_failed: bool,
    /// Do not write ssb.json or the catalog after building (the original tool's behaviour)
    #[arg(long)]
    pub no_publish: bool,
}

/// `build-versions-manifest`.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Product name
    #[arg(short = 'p', long = "product")]
    pub product: String,
    /// Tree to read images from (default: the target dir, else .)
    #[arg(short = 's', long = "source-dir", value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// Print the manifest on stdout instead of writing ssb.json
    #[arg(long)]
    pub stdout: bool,
    /// distrobuilder image file whose `image.expiry` sets the support end
    #[arg(short = 'i', long = "product-image-file", value_name = "IMAGE_YAML")]
    pub image_file: Option<PathBuf>,
    /// Support duration from the newest build, e.g. 30d or 1w2d (wins over -i)
    #[arg(short = 'e', long = "force-expire", value_name = "DURATION")]
    pub expire: Option<String>,
    /// Also compute md5 of every item
    #[arg(long)]
    pub md5: bool,
}

/// `build-images-file` and `build-index`.
#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Tree to read ssb.json files from (default: the target dir)
    #[arg(short = 's', long = "source-dir", value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// Print the JSON on stdout instead of writing it
    #[arg(long)]
    pub stdout: bool,
    /// Leave out products whose manifest cannot be loaded, with a warning, instead of failing
    /// (a product whose ssb.json does not exist yet is always left out, with a warning)
    #[arg(long, env = "SSBUILDER_SKIP_UNAVAILABLE", value_parser = FalseyValueParser::new())]
    pub skip_unavailable: bool,
    /// Replace the published catalog even when the new one keeps none of its products (the
    /// sign of the wrong mode or tree.yml)
    #[arg(long)]
    pub force: bool,
}

/// `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// One unified tarball, or a metadata tarball and its rootfs (squashfs, root.tar.xz, qcow2);
    /// with a root tarball, classic LXC's meta.tar.xz may come too (told by what it holds)
    #[arg(value_name = "FILE", num_args = 0..=3, required_unless_present = "from_dir")]
    pub files: Vec<PathBuf>,
    /// Import every image found under this folder instead
    #[arg(long, value_name = "SRC", conflicts_with = "files")]
    pub from_dir: Option<PathBuf>,
    /// Extra alias for the product (repeatable)
    #[arg(long = "alias", value_name = "ALIAS")]
    pub aliases: Vec<String>,
    /// Variant folder instead of metadata.yaml's `variant` (default: default)
    #[arg(long)]
    pub variant: Option<String>,
}

/// Output format of `verify` and `list`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    #[default]
    Table,
    /// JSON for programs.
    Json,
}

/// `verify` and `list`.
#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// `prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete for real (without it, only list what would go)
    #[arg(long)]
    pub yes: bool,
    /// On a bucket (-t s3://…): keep an object nothing names for this long after prune first
    /// finds it so, for clients and CDNs still holding an older index (default 6h)
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub grace: Option<std::time::Duration>,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8443", env = "SSB_LISTEN")]
    pub listen: SocketAddr,
    /// With -t s3://…: answer image requests with a redirect to a presigned URL of the bucket
    /// (valid for an hour) instead of streaming the bytes through this server
    #[arg(long)]
    pub redirect: bool,
    /// PEM certificate (default: a self-signed one kept under <target>/.ssb/tls/)
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Extra DNS name or IP for the self-signed certificate (repeatable)
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_san: Vec<String>,
    /// Serve plain HTTP, for use behind a TLS-terminating proxy
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_san"])]
    pub http: bool,
    /// Pull the `mirrors:` of tree.yml into the served tree now and then every DURATION
    /// (e.g. 30m, 6h)
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub mirror_interval: Option<std::time::Duration>,
    /// Own the catalog: publish at start-up, re-index after every upload or delete and when
    /// files arrive by other means (implied by a write token or --allow-anonymous-writes)
    #[arg(long, env = "SSB_INDEX", value_parser = FalseyValueParser::new())]
    pub index: bool,
    /// With --index, do not watch the tree for files copied in by other means
    #[arg(long)]
    pub no_watch: bool,
    /// With --index, replace the published catalog even when a re-index keeps none of its
    /// products (the sign of the wrong mode or tree.yml)
    #[arg(long)]
    pub force: bool,
    /// File holding the bearer token that uploads and deletes must carry
    #[arg(long, env = "SSB_WRITE_TOKEN_FILE", value_name = "FILE")]
    pub write_token_file: Option<PathBuf>,
    /// The write token itself (prefer the environment or --write-token-file: command lines are
    /// visible to other users); --write-token-file wins when both are given
    #[arg(
        long,
        env = "SSB_WRITE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub write_token: Option<String>,
    /// Accept uploads and deletes without a token (only on a trusted network)
    #[arg(long)]
    pub allow_anonymous_writes: bool,
    /// An upload replaces an existing file; without it the upload is stored under a changed
    /// name (lxd.tar-1.xz) that the response states
    #[arg(long, env = "ALLOW_OVERWRITES", value_parser = FalseyValueParser::new())]
    pub allow_overwrites: bool,
    /// Accept DELETE of image files and version folders under images/
    #[arg(long, env = "ALLOW_DELETES", value_parser = FalseyValueParser::new())]
    pub allow_deletes: bool,
    /// Largest accepted upload: bytes, or with a K, M, G or T suffix (powers of 1024)
    #[arg(long, env = "SSB_MAX_UPLOAD_SIZE", default_value = "10G", value_parser = parse_size, value_name = "SIZE")]
    pub max_upload_size: u64,
    /// A private server: every read needs a login from this users file (`users add`), and each
    /// user sees only its products (basic auth, as https://USER:TOKEN@HOST sends it, or a bearer
    /// token). Write tokens stay separate
    #[arg(long, env = "SSB_READ_USERS", value_name = "FILE")]
    pub read_users: Option<PathBuf>,
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = simplestreams_builder::config::expiry::HumanDuration::parse(s)
        .map_err(|e| e.to_string())?;
    Ok(std::time::Duration::from_secs(d.seconds().max(1) as u64))
}

/// `10G` → 10 GiB; a plain number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix `{c}` (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 1048576, 512M or 10G"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Build and publish only; do not serve
    #[arg(long)]
    pub no_serve: bool,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
}

/// Moves a subcommand's flags given before its name to after it. The original tool (cobra)
/// accepted `simplestreams-builder -s DIR build-images-file --stdout`, and task files use that
/// order; clap reads a subcommand's flags only after its name. The root's own flags stay where
/// they are; nothing after the subcommand's name moves.
pub fn subcommand_flags_after_name(args: Vec<OsString>) -> Vec<OsString> {
    let cli = Cli::command();
    // Whether a flag takes a value, over the root and every subcommand (they agree on it).
    let takes_value = |flag: &str| -> Option<bool> {
        let matches = |a: &clap::Arg| {
            flag.strip_prefix("--").map_or_else(
                || {
                    let mut chars = flag.chars().skip(1);
                    chars.next().is_some_and(|c| a.get_short() == Some(c))
                },
                |long| a.get_long() == Some(long),
            )
        };
        std::iter::once(&cli)
            .chain(cli.get_subcommands())
            .flat_map(|c| c.get_arguments())
            .find(|a| matches(a))
            .map(|a| a.get_action().takes_values())
    };
    let is_root_flag = |flag: &str| {
        cli.get_arguments().any(|a| {
            flag.strip_prefix("--").map_or_else(
                || {
                    flag.chars()
                        .nth(1)
                        .is_some_and(|c| a.get_short() == Some(c))
                },
                |long| a.get_long() == Some(long),
            )
        })
    };
    let mut early: Vec<usize> = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let token = args[i].to_string_lossy().into_owned();
        if token == "--" || !token.starts_with('-') || token == "-" {
            let is_subcommand = cli.find_subcommand(&token).is_some();
            if !is_subcommand || early.is_empty() {
                return args;
            }
            let mut out: Vec<OsString> = Vec::with_capacity(args.len());
            out.extend(
                (0..=i)
                    .filter(|j| !early.contains(j))
                    .map(|j| args[j].clone()),
            );
            out.extend(early.iter().map(|&j| args[j].clone()));
            out.extend(args[i + 1..].iter().cloned());
            return out;
        }
        let (flag, inline) = match token.split_once('=') {
            Some((f, _)) => (f.to_owned(), true),
            None if !token.starts_with("--") && token.len() > 2 => (token[..2].to_owned(), true),
            None => (token.clone(), false),
        };
        let width = if !inline && takes_value(&flag) == Some(true) {
            2
        } else {
            1
        };
        if !is_root_flag(&flag) {
            early.extend(i..(i + width).min(args.len()));
        }
        i += width;
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert!(parse_size("10X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn subcommand_flags_before_the_name_move_after_it() {
        let moved = |line: &str| {
            let args: Vec<OsString> = line.split(' ').map(OsString::from).collect();
            subcommand_flags_after_name(args)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            moved("ssb -s DIR build-images-file --stdout"),
            "ssb build-images-file -s DIR --stdout"
        );
        assert_eq!(
            moved("ssb -c tree.yml --source-dir=./images -t images build-index"),
            "ssb -c tree.yml -t images build-index --source-dir=./images"
        );
        assert_eq!(
            moved("ssb -c t.yml -t images -p P -s ./images build-versions-manifest -i x"),
            "ssb -c t.yml -t images build-versions-manifest -p P -s ./images -i x"
        );
        for unchanged in ["ssb -c t.yml publish -s x", "ssb --help", "ssb -t a print"] {
            assert_eq!(moved(unchanged), unchanged);
        }
        let parsed = Cli::try_parse_from(subcommand_flags_after_name(
            ["ssb", "-s", "DIR", "build-images-file", "--stdout"]
                .map(OsString::from)
                .to_vec(),
        ))
        .unwrap();
        let Command::BuildImagesFile(args) = parsed.command else {
            panic!("{parsed:?}")
        };
        assert_eq!(args.source_dir, Some(PathBuf::from("DIR")));
        assert!(args.stdout);
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
