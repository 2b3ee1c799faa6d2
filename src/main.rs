use clap::{Parser, Subcommand};

/// Kubernetes controller for private Bitcoin regtest networks.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: bitcoin_controller::controller::Options,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (the default).
    Run,
    /// Print the BitcoinNetwork CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        let crd = bitcoin_controller::api::crd();
        print!("{}", serde_saphyr::to_string(&crd).expect("CRD serializes"));
        return std::process::ExitCode::SUCCESS;
    }
    // kube-client logs every failed request at ERROR; the controller logs
    // the same failure once, with the call it was for.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module("kube_client::client::builder", log::LevelFilter::Off)
        .parse_env(env_logger::Env::default())
        .init();
    cap_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(bitcoin_controller::controller::run(cli.run)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How many malloc arenas the process may use (unless `MALLOC_ARENA_MAX`
/// says otherwise).
const MALLOC_ARENAS: i32 = 2;

/// glibc gives threads that allocate at the same time arenas of their own,
/// up to eight per core, and memory freed in one arena is not reused by
/// the others: with thousands of cached objects built on the runtime's
/// worker threads, two arenas of about 34 MiB each were measured at 1,000
/// networks. Two arenas are plenty for a controller that waits on the
/// network most of the time. Other C libraries (musl) have no arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap_malloc_arenas() {
    use std::os::raw::c_int;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    /// `M_ARENA_MAX` of glibc's `<malloc.h>`.
    const M_ARENA_MAX: c_int = -8;
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of glibc's allocator; it is
        // called before any other thread exists.
        unsafe {
            mallopt(M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}
