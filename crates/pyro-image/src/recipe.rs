//! Environment recipes: the curated catalog (`debian:12`, `debian:12-base`, `debian:12-build`),
//! kept as TOML files under `envs/` in the repository and embedded into the binary, so a pyro
//! binary always builds exactly the environments it was released with.
//!
//! A recipe's hash covers its file text, the builder version and the target architecture; a
//! cached build whose hash differs from the current one is stale and `resolve` refuses it.

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// The version of what the builder makes from a recipe. Bump it whenever the build changes its
/// output for an unchanged recipe (mmdebstrap flags, image config, layer format), so that every
/// cached environment becomes stale and gets rebuilt.
pub const BUILDER_VERSION: &str = "1";

/// The embedded recipe files, in catalog order.
const RECIPE_FILES: &[(&str, &str)] = &[
    (
        "envs/debian-12.toml",
        include_str!("../../../envs/debian-12.toml"),
    ),
    (
        "envs/debian-12-base.toml",
        include_str!("../../../envs/debian-12-base.toml"),
    ),
    (
        "envs/debian-12-build.toml",
        include_str!("../../../envs/debian-12-build.toml"),
    ),
];

/// The mmdebstrap variants a recipe may name (see mmdebstrap(1), `--variant`).
const VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
];

/// The file format, kept apart from [`Recipe`] so the parsed type can hold its source text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipeFile {
    name: String,
    description: String,
    suite: String,
    variant: String,
    #[serde(default)]
    packages: Vec<String>,
}

/// One environment recipe: what mmdebstrap is asked to build, plus the text it was parsed from
/// (the hash covers the text, so the fields are read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    name: String,
    description: String,
    suite: String,
    variant: String,
    packages: Vec<String>,
    text: String,
}

impl Recipe {
    /// Parses and validates a recipe file. Every field ends up on mmdebstrap's command line, so
    /// each is checked to be a plain name that cannot be read as an option.
    pub fn parse(text: &str) -> Result<Recipe> {
        let file: RecipeFile = toml::from_str(text)
            .map_err(|e| Error::InvalidRequest(format!("invalid environment recipe: {e}")))?;
        let invalid = |what: &str, value: &str| {
            Error::InvalidRequest(format!("invalid environment recipe: bad {what} {value:?}"))
        };
        let name_ok = !file.name.is_empty()
            && file
                .name
                .starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && file.name.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, ':' | '.' | '_' | '-')
            });
        if !name_ok {
            return Err(invalid("name", &file.name));
        }
        let suite_ok = !file.suite.is_empty()
            && file.suite.starts_with(|c: char| c.is_ascii_lowercase())
            && file
                .suite
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !suite_ok {
            return Err(invalid("suite", &file.suite));
        }
        if !VARIANTS.contains(&file.variant.as_str()) {
            return Err(invalid("variant", &file.variant));
        }
        for package in &file.packages {
            if !is_debian_package_name(package) {
                return Err(invalid("package name", package));
            }
        }
        Ok(Recipe {
            name: file.name,
            description: file.description,
            suite: file.suite,
            variant: file.variant,
            packages: file.packages,
            text: text.to_owned(),
        })
    }

    /// The environment's name, e.g. `debian:12`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A one-line description for `pyro env list`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The Debian suite (codename), e.g. `bookworm`.
    pub fn suite(&self) -> &str {
        &self.suite
    }

    /// The mmdebstrap variant, e.g. `minbase`.
    pub fn variant(&self) -> &str {
        &self.variant
    }

    /// Packages installed on top of the variant.
    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    /// The recipe file's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The recipe hash: sha256 (lowercase hex) over the file text, [`BUILDER_VERSION`] and the
    /// target architecture. Labelled fields separated by NUL bytes keep one input from running
    /// into the next.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"recipe\0");
        hasher.update(self.text.as_bytes());
        hasher.update(b"\0builder\0");
        hasher.update(BUILDER_VERSION.as_bytes());
        hasher.update(b"\0arch\0");
        hasher.update(host_arch().as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// Debian policy §5.6.7: at least two characters, lowercase letters, digits and `+ - .`,
/// starting with a letter or digit.
fn is_debian_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

/// The host's architecture under its Debian and OCI name (`amd64`, `arm64`), which is what
/// mmdebstrap builds for by default.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "powerpc64" => "ppc64el",
        other => other,
    }
}

/// The curated catalog, in display order.
pub fn catalog() -> Vec<Recipe> {
    RECIPE_FILES
        .iter()
        .map(|(path, text)| {
            // The files are compiled in and the tests parse every one of them, so a failure here
            // is a broken build, not bad input.
            Recipe::parse(text).unwrap_or_else(|e| panic!("embedded recipe {path} is invalid: {e}"))
        })
        .collect()
}

/// The catalog recipe named `name`, or [`Error::UnknownEnvironment`].
pub(crate) fn find(name: &str) -> Result<Recipe> {
    let recipes = catalog();
    let known = recipes.iter().map(|r| r.name.clone()).collect();
    recipes
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| Error::UnknownEnvironment {
            name: name.to_owned(),
            known,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_parses_with_expected_contents() {
        let recipes = catalog();
        let names: Vec<&str> = recipes.iter().map(|r| r.name()).collect();
        assert_eq!(names, ["debian:12", "debian:12-base", "debian:12-build"]);
        for r in &recipes {
            assert_eq!(r.suite(), "bookworm");
            assert_eq!(r.variant(), "minbase");
            assert!(!r.description().is_empty());
        }
        assert_eq!(recipes[0].packages(), ["git", "ca-certificates", "python3"]);
        assert!(recipes[1].packages().is_empty());
        assert_eq!(
            recipes[2].packages(),
            [
                "git",
                "build-essential",
                "pkg-config",
                "python3",
                "curl",
                "ca-certificates"
            ]
        );
    }

    #[test]
    fn hash_is_stable_and_covers_text_builder_and_arch() {
        let r = find("debian:12").expect("in catalog");
        assert_eq!(r.hash(), r.hash());
        assert_eq!(r.hash(), find("debian:12").expect("in catalog").hash());
        assert_eq!(r.hash().len(), 64);

        let mut hasher = Sha256::new();
        hasher.update(b"recipe\0");
        hasher.update(r.text().as_bytes());
        hasher.update(b"\0builder\0");
        hasher.update(BUILDER_VERSION.as_bytes());
        hasher.update(b"\0arch\0");
        hasher.update(host_arch().as_bytes());
        assert_eq!(r.hash(), hex::encode(hasher.finalize()));

        // A comment changes the text and therefore the hash, on purpose: the hash is over the
        // file, not over the parsed fields.
        let edited = Recipe::parse(&format!("{}# edited\n", r.text())).expect("parses");
        assert_eq!(edited.packages(), r.packages());
        assert_ne!(edited.hash(), r.hash());

        let hashes: std::collections::HashSet<String> =
            catalog().iter().map(Recipe::hash).collect();
        assert_eq!(hashes.len(), 3);
    }

    #[test]
    fn parse_rejects_bad_recipes() {
        let check = |text: &str| {
            let err = Recipe::parse(text).expect_err(text);
            assert_eq!(err.kind(), "invalid_request", "{text}: {err}");
        };
        let ok =
            "name = \"x:1\"\ndescription = \"d\"\nsuite = \"bookworm\"\nvariant = \"minbase\"\n";
        Recipe::parse(ok).expect("minimal recipe parses");
        check("name = \"x\"");
        check(&format!("{ok}extra = 1\n"));
        check(&ok.replace("minbase", "tiny"));
        check(&ok.replace("bookworm", "--hook"));
        check(&ok.replace("x:1", "X Y"));
        check(&format!("{ok}packages = [\"--include=evil\"]\n"));
        check(&format!("{ok}packages = [\"a\"]\n"));
        check("not toml [");
    }

    #[test]
    fn unknown_name_lists_known_ones() {
        match find("ubuntu:24.04") {
            Err(Error::UnknownEnvironment { name, known }) => {
                assert_eq!(name, "ubuntu:24.04");
                assert_eq!(known, ["debian:12", "debian:12-base", "debian:12-build"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
