//! The Health Status answer parser and its verdict, on arbitrary bytes: no panic, and the
//! verdict's summary is stable (the poller compares summaries to skip steady answers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wa_breaker::graph::health::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(hs) = parse(data) else {
        return;
    };
    let mut ids: Vec<String> = hs.entities.iter().map(|e| e.id.clone()).collect();
    ids.push("102290129340398".into());
    for id in &ids {
        let v = hs.verdict_for_waba(id);
        let _ = v.as_str();
        assert_eq!(v.summary(), hs.verdict_for_waba(id).summary());
        assert!(!v.summary().is_empty());
    }
});
