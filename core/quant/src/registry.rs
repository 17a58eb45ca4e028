//! The format registry: plugin crates add themselves to a link-time slice.
//!
//! A crate registers with [`crate::register_format!`]. The linker drops a
//! crate nothing references, so binaries link every plugin through the one
//! crate that names them all (`gguftool-formats`).

use crate::format::Format;
use crate::recipe::Recipe;
use gguftool_gguf::ggml_type::{ggml_type, PRIVATE_TYPE_ID_BASE, PRIVATE_TYPE_ID_END};
use gguftool_gguf::validate::{TypeGeometry, TypeResolver};
use gguftool_gguf::GgufFile;
use std::collections::HashSet;
use std::path::Path;

/// Every registered format, in link order.
#[linkme::distributed_slice]
pub static FORMATS: [&'static dyn Format];

/// Registers a format value: `register_format!(STATIC_NAME, &MyFormat);`.
#[macro_export]
macro_rules! register_format {
    ($name:ident, $value:expr) => {
        #[$crate::linkme::distributed_slice($crate::registry::FORMATS)]
        #[linkme(crate = $crate::linkme)]
        static $name: &'static dyn $crate::format::Format = $value;
    };
}

/// Every registered recipe, in link order.
#[linkme::distributed_slice]
pub static RECIPES: [&'static dyn Recipe];

/// Registers a recipe value: `register_recipe!(STATIC_NAME, &MyRecipe);`.
#[macro_export]
macro_rules! register_recipe {
    ($name:ident, $value:expr) => {
        #[$crate::linkme::distributed_slice($crate::registry::RECIPES)]
        #[linkme(crate = $crate::linkme)]
        static $name: &'static dyn $crate::recipe::Recipe = $value;
    };
}

/// All registered recipes.
pub fn recipes() -> &'static [&'static dyn Recipe] {
    &RECIPES
}

/// The recipe called `name` (case-insensitive).
pub fn recipe_by_name(name: &str) -> Option<&'static dyn Recipe> {
    RECIPES
        .iter()
        .copied()
        .find(|r| r.name().eq_ignore_ascii_case(name))
}

/// All registered formats.
pub fn all() -> &'static [&'static dyn Format] {
    &FORMATS
}

/// Formats with blocks of more than one element (the quantized ones), by type id.
pub fn block_formats() -> Vec<&'static dyn Format> {
    let mut v: Vec<_> = FORMATS
        .iter()
        .copied()
        .filter(|f| f.block_size() > 1)
        .collect();
    v.sort_by_key(|f| f.type_id());
    v
}

/// The format called `name` (case-insensitive).
pub fn by_name(name: &str) -> Option<&'static dyn Format> {
    FORMATS
        .iter()
        .copied()
        .find(|f| f.name().eq_ignore_ascii_case(name))
}

/// The format stored under ggml type id `id`.
pub fn by_type_id(id: u32) -> Option<&'static dyn Format> {
    FORMATS.iter().copied().find(|f| f.type_id() == id)
}

/// Resolves private tensor type ids through the registered formats, for the
/// container's validator.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegistryTypes;

/// The resolver to pass to `gguftool_gguf` when opening files.
pub static TYPES: RegistryTypes = RegistryTypes;

impl TypeResolver for RegistryTypes {
    fn private_type(&self, id: u32) -> Option<TypeGeometry> {
        if !(PRIVATE_TYPE_ID_BASE..=PRIVATE_TYPE_ID_END).contains(&id) {
            return None;
        }
        by_type_id(id).map(|f| TypeGeometry {
            name: f.name(),
            block_size: f.block_size() as u64,
            type_size: f.type_size() as u64,
        })
    }
}

/// Opens and validates a GGUF file, resolving private type ids through the
/// registered formats.
///
/// # Errors
/// I/O failures and every validation error of [`GgufFile::open`].
pub fn open(path: impl AsRef<Path>) -> gguftool_gguf::Result<GgufFile> {
    GgufFile::open(path, &TYPES)
}

/// Checks the registry's invariants: non-empty, unique names and ids,
/// standard ids matching ggml's geometry, custom ids in the private range;
/// recipe names unique and distinct from every format name.
pub fn check() -> Result<(), String> {
    check_formats(&FORMATS)?;
    check_recipes(&FORMATS, &RECIPES)
}

/// The recipe part of [`check`] on explicit lists.
pub fn check_recipes(formats: &[&dyn Format], recipes: &[&dyn Recipe]) -> Result<(), String> {
    let format_names: HashSet<String> = formats
        .iter()
        .map(|f| f.name().to_ascii_lowercase())
        .collect();
    let mut names = HashSet::new();
    for r in recipes {
        let name = r.name().to_ascii_lowercase();
        if name.is_empty() {
            return Err("a recipe has an empty name".into());
        }
        if format_names.contains(&name) {
            return Err(format!("recipe name {:?} is also a format name", r.name()));
        }
        if !names.insert(name) {
            return Err(format!("recipe name {:?} registered twice", r.name()));
        }
    }
    Ok(())
}

/// [`check`] on an explicit list (testable without linking plugins).
pub fn check_formats(formats: &[&dyn Format]) -> Result<(), String> {
    if formats.is_empty() {
        return Err("no formats registered (is a format crate linked?)".into());
    }
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    for f in formats {
        if !names.insert(f.name().to_ascii_lowercase()) {
            return Err(format!("format name {:?} registered twice", f.name()));
        }
        if !ids.insert(f.type_id()) {
            return Err(format!(
                "type id {} registered twice ({})",
                f.type_id(),
                f.name()
            ));
        }
        if f.block_size() == 0 || f.type_size() == 0 {
            return Err(format!("format {} has an empty block", f.name()));
        }
        match ggml_type(f.type_id()) {
            Some(t) => {
                if t.block_size as usize != f.block_size() || t.type_size as usize != f.type_size() {
                    return Err(format!(
                        "format {} claims ggml id {} ({}) with a different block geometry",
                        f.name(),
                        t.id,
                        t.name
                    ));
                }
            }
            None if (PRIVATE_TYPE_ID_BASE..=PRIVATE_TYPE_ID_END).contains(&f.type_id()) => {}
            None => {
                return Err(format!(
                    "format {} uses type id {} outside the private range {PRIVATE_TYPE_ID_BASE}..={PRIVATE_TYPE_ID_END}",
                    f.name(),
                    f.type_id()
                ))
            }
        }
    }
    Ok(())
}

/// The default candidates of a recipe: every registered block format that
/// can encode and suits post-training quantization (so not the ternary
/// ones), by type id.
pub fn default_candidates() -> Vec<&'static dyn Format> {
    block_formats()
        .into_iter()
        .filter(|f| f.quantizer().is_some() && f.suits_post_training())
        .collect()
}
