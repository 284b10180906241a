//! `config_toml`: the TOML config document (`trackwire check`, `apply`,
//! `data-plane`, `dev` all read it with `Document::parse`).

use trackwire_core::config::Document;

/// Parses `data` as a config file. A document that parses (and so
/// validates) renders with `to_toml`, and that text parses back to the same
/// document.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = Document::parse(text) else {
        return;
    };
    check_round_trip(&doc);
}

/// `doc` (already valid) renders and parses back to itself.
pub(crate) fn check_round_trip(doc: &Document) {
    if let Err(e) = doc.validate() {
        panic!("a parsed document does not validate: {e}\n{doc:?}");
    }
    let rendered = match doc.to_toml() {
        Ok(t) => t,
        Err(e) => panic!("a valid document does not render: {e}\n{doc:?}"),
    };
    match Document::parse(&rendered) {
        Ok(back) => assert_eq!(&back, doc, "round trip changed the document:\n{rendered}"),
        Err(e) => panic!("the rendered document does not parse: {e}\n{rendered}"),
    }
}
