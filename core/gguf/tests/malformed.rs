//! Every committed malformed fixture is rejected with a typed error whose
//! message names the problem; every truncation of valid files is rejected.

use gguftool_gguf::parse_header;
use gguftool_gguf::validate::StandardTypes;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// (file name, accepted message fragments) from `malformed/expected.tsv`.
pub fn expectations() -> Vec<(String, Vec<String>)> {
    let dir = fixtures().join("malformed");
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).unwrap()
        + &std::fs::read_to_string(dir.join("fuzz-expected.tsv")).unwrap();
    tsv.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (f, e) = l.split_once('\t').unwrap();
            (f.to_string(), e.split('|').map(str::to_string).collect())
        })
        .collect()
}

#[test]
fn every_malformed_fixture_is_rejected_with_its_reason() {
    let cases = expectations();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    for (file, expect) in cases {
        let bytes = std::fs::read(fixtures().join("malformed").join(&file)).unwrap();
        let err = parse_header(&bytes, &StandardTypes)
            .expect_err(&file)
            .to_string();
        assert!(
            expect.iter().any(|e| err.contains(e.as_str())),
            "{file}: error {err:?} does not mention any of {expect:?}"
        );
    }
}

#[test]
fn every_truncation_of_valid_files_is_rejected() {
    for name in ["valid-minimal.gguf", "tiny-llama-f32.gguf"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let h = parse_header(&bytes, &StandardTypes).unwrap();
        // Every prefix that cuts the header or any tensor's data must fail.
        let last_data_end = h
            .tensors
            .iter()
            .map(|t| h.data_offset + t.offset + t.n_bytes)
            .max()
            .unwrap_or(h.data_offset);
        let step = if bytes.len() > 100_000 { 997 } else { 1 };
        let header_len = h.infos_end as usize;
        for len in (0..header_len).chain((header_len..last_data_end as usize).step_by(step)) {
            assert!(
                parse_header(&bytes[..len], &StandardTypes).is_err(),
                "{name}: prefix of {len} bytes accepted"
            );
        }
    }
}

#[test]
fn valid_fixtures_parse() {
    let h = parse_header(
        &std::fs::read(fixtures().join("valid-minimal.gguf")).unwrap(),
        &StandardTypes,
    )
    .unwrap();
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensors[1].type_name, "Q8_0");
    assert_eq!(h.tensors[1].n_bytes, 68);
    assert!(h.is_canonical_layout());
}
