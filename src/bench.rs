use anyhow::Result;
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}
pub fn run(_: &BenchArgs) -> Result<()> {
    Ok(())
}
