//! The `tidings` command: a thin shell over the `tidings` library.

mod cli;
mod config_loader;
mod dev_mode;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => cli::serve(args),
        Command::Gentoken(args) => cli::gentoken(args),
        Command::Checkconfig(args) => cli::checkconfig(args),
        Command::OutboxDdl(args) => cli::print_outbox_ddl(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tidings: {err:#}");
            ExitCode::FAILURE
        }
    }
}
