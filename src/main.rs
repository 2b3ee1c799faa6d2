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
    bitcoin_controller::memory::cap_arenas();
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
