pub struct Options { pub bytes: u64, pub runs: u32 }
pub async fn run(_o: Options) -> anyhow::Result<crate::report::Report> { anyhow::bail!("todo") }
