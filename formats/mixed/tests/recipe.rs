//! The `mixed` recipe in the registry, and the registry's recipe checks.

use gguftool_ggml as _;
use gguftool_mixed as _;
use gguftool_quant::recipe::{Allocation, Recipe, RecipeError, RecipeRequest};
use gguftool_quant::registry;

struct Named(&'static str);

impl Recipe for Named {
    fn name(&self) -> &'static str {
        self.0
    }
    fn description(&self) -> &'static str {
        "test"
    }
    fn assign(&self, _: &RecipeRequest) -> Result<Allocation, RecipeError> {
        Err(RecipeError::Invalid("test".into()))
    }
}

#[test]
fn mixed_is_registered_as_a_recipe() {
    registry::check().unwrap();
    let r = registry::recipe_by_name("MIXED").unwrap();
    assert_eq!(r.name(), "mixed");
    assert!(
        registry::by_name("mixed").is_none(),
        "a recipe, not a format"
    );
    // Out-of-range budgets are refused before anything is measured.
    let q4 = registry::by_name("q4_0").unwrap();
    let q8 = registry::by_name("q8_0").unwrap();
    assert!(r.validate(&[q4, q8], 6.0).is_ok());
    for bad in [f64::NAN, f64::INFINITY, 0.0, -1.0, 1e308, 2.0] {
        assert!(
            matches!(r.validate(&[q4, q8], bad), Err(RecipeError::Invalid(_))),
            "{bad}"
        );
    }
    let f32 = registry::by_name("f32").unwrap();
    assert!(
        r.validate(&[f32], 8.0).is_err(),
        "f32 is not a block format"
    );
}

#[test]
fn recipe_names_are_unique_and_distinct_from_formats() {
    let formats = registry::all();
    assert!(registry::check_recipes(formats, &[&Named("a"), &Named("b")]).is_ok());
    let dup = registry::check_recipes(formats, &[&Named("a"), &Named("A")]).unwrap_err();
    assert!(dup.contains("twice"), "{dup}");
    let clash = registry::check_recipes(formats, &[&Named("Q4_0")]).unwrap_err();
    assert!(clash.contains("also a format"), "{clash}");
}
