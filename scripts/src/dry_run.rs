//! `xmagent test-script`: run one script against one request file and print the outcome as JSON.

/// Arguments of `xmagent test-script`.
#[derive(Debug, clap::Args)]
pub struct TestScriptArgs {
    /// The integration script.
    pub script: std::path::PathBuf,
}

/// Run the dry run and return the process exit code.
pub fn main(args: TestScriptArgs) -> i32 {
    let _ = args;
    1
}
