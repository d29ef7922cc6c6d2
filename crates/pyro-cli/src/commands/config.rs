//! `pyro config`: the user's defaults file.

use std::process::ExitCode;

use pyro::user_config::{self, UserConfig};

use crate::cli::ConfigCommand;
use crate::output::print_json;

pub fn config(c: ConfigCommand) -> anyhow::Result<ExitCode> {
    let path = user_config::path();
    match c {
        ConfigCommand::Show(o) => {
            let file = user_config::load_from(&path)?;
            let (level, source) = user_config::default_isolation()?;
            if o.json {
                print_json(&serde_json::json!({
                    "path": path,
                    "exists": path.exists(),
                    "settings": file,
                    "isolation": {"level": level, "source": source},
                }))?;
            } else {
                println!(
                    "# {}{}",
                    path.display(),
                    if path.exists() {
                        ""
                    } else {
                        " (not created yet)"
                    }
                );
                print!("{}", toml_text(&file)?);
                println!(
                    "# isolation in effect: {level} (from {})",
                    source_words(source)
                );
            }
        }
        ConfigCommand::Set(a) => {
            let file = user_config::edit(&path, &a.key, Some(&a.value))?;
            report(&path, &file, a.out.json)?;
        }
        ConfigCommand::Unset(a) => {
            let file = user_config::edit(&path, &a.key, None)?;
            report(&path, &file, a.out.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(path: &std::path::Path, file: &UserConfig, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(&serde_json::json!({"path": path, "settings": file}))
    } else {
        eprintln!("[config] wrote {}", path.display());
        print!("{}", toml_text(file)?);
        Ok(())
    }
}

fn toml_text(file: &UserConfig) -> anyhow::Result<String> {
    // serde_json → text keeps this crate free of a TOML dependency; values are simple scalars.
    let v = serde_json::to_value(file)?;
    let mut out = String::new();
    if let Some(map) = v.as_object() {
        for (k, v) in map {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    Ok(out)
}

/// How a setting's source reads in a sentence.
pub fn source_words(source: user_config::Source) -> &'static str {
    match source {
        user_config::Source::Environment => "PYRO_ISOLATION",
        user_config::Source::ConfigFile => "the config file",
        user_config::Source::BuiltIn => "the built-in default",
    }
}
