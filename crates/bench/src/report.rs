pub struct Report;
pub fn emit(_r: &Report, _j: Option<&std::path::Path>) -> anyhow::Result<()> { Ok(()) }
