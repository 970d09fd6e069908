//! Subcommands of the `balans` binary: argument types and thin glue that
//! reads tables, calls the library and writes results.

pub mod apply;
pub mod correct;
pub mod evaluate;
pub mod logging;
pub mod method_args;
pub mod progress;
pub mod realign;
pub mod serve;
pub mod state;
pub mod synth;
pub mod tables;
