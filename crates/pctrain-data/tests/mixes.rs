//! Each mix on single- and multi-turn records, fallbacks, `--require-pc`, and blend determinism.

mod common;

use pctrain_data::{Format, Message, Mix, MixCounts, Mixer, PcJoin, Record, Role};

fn single() -> Record {
    Record {
        id: "single".into(),
        dataset: None,
        messages: vec![
            Message::new(Role::System, "Be kind."),
            Message::new(Role::User, "Write a haiku in lowercase."),
            Message::new(Role::Assistant, "soft rain on the roof"),
        ],
        pseudo_code: vec![Some(
            "def haiku() -> str:\n    return write_haiku(lowercase=True)".into(),
        )],
        constraints: Vec::new(),
    }
}

/// Three user turns; the second has no pseudo-code.
fn multi() -> Record {
    Record {
        id: "multi".into(),
        dataset: None,
        messages: vec![
            Message::new(Role::User, "List two fruits."),
            Message::new(Role::Assistant, "apple, pear"),
            Message::new(Role::User, "Thanks!"),
            Message::new(Role::Assistant, "You're welcome."),
            Message::new(Role::User, "Now in uppercase."),
            Message::new(Role::Assistant, "APPLE, PEAR"),
        ],
        pseudo_code: vec![Some("pc_one()".into()), None, Some("pc_three()".into())],
        constraints: Vec::new(),
    }
}

fn no_pc() -> Record {
    Record {
        id: "plain".into(),
        pseudo_code: vec![None],
        ..single()
    }
}

fn mixer(mix: &str) -> Mixer {
    Mixer {
        mix: mix.parse().unwrap(),
        seed: 42,
        require_pc: false,
        join: PcJoin::default(),
    }
}

fn contents(messages: &[Message]) -> Vec<(Role, &str)> {
    messages
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect()
}

#[test]
fn nl_keeps_the_record_as_it_is() {
    for r in [single(), multi()] {
        let s = mixer("nl").samples(&r, &mut MixCounts::default());
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].format, Format::Nl);
        assert_eq!(s[0].messages, r.messages);
    }
}

#[test]
fn pc_replaces_user_turns_that_have_pseudo_code() {
    let s = mixer("pc").samples(&single(), &mut MixCounts::default());
    assert_eq!(
        contents(&s[0].messages),
        vec![
            (Role::System, "Be kind."),
            (
                Role::User,
                "def haiku() -> str:\n    return write_haiku(lowercase=True)"
            ),
            (Role::Assistant, "soft rain on the roof"),
        ]
    );
    let s = mixer("pc").samples(&multi(), &mut MixCounts::default());
    assert_eq!(
        contents(&s[0].messages),
        vec![
            (Role::User, "pc_one()"),
            (Role::Assistant, "apple, pear"),
            (Role::User, "Thanks!"),
            (Role::Assistant, "You're welcome."),
            (Role::User, "pc_three()"),
            (Role::Assistant, "APPLE, PEAR"),
        ]
    );
}

#[test]
fn nl_pc_prefixes_answers_with_their_turns_pseudo_code() {
    let s = mixer("nl-pc").samples(&single(), &mut MixCounts::default());
    assert_eq!(s[0].format, Format::NlPc);
    assert_eq!(s[0].messages[1], single().messages[1]);
    assert_eq!(
        s[0].messages[2].content,
        "```python\ndef haiku() -> str:\n    return write_haiku(lowercase=True)\n```\n\nsoft rain on the roof"
    );
    let s = mixer("nl-pc").samples(&multi(), &mut MixCounts::default());
    let m = contents(&s[0].messages);
    assert_eq!(m[0], (Role::User, "List two fruits."));
    assert_eq!(
        m[1],
        (Role::Assistant, "```python\npc_one()\n```\n\napple, pear")
    );
    assert_eq!(m[3], (Role::Assistant, "You're welcome."));
    assert_eq!(
        m[5],
        (Role::Assistant, "```python\npc_three()\n```\n\nAPPLE, PEAR")
    );
    // The pseudo-code part strips off again.
    assert_eq!(PcJoin::default().strip(m[5].1), "APPLE, PEAR");
}

#[test]
fn both_renditions_with_plus() {
    let s = mixer("nl+nl-pc").samples(&multi(), &mut MixCounts::default());
    let formats: Vec<Format> = s.iter().map(|s| s.format).collect();
    assert_eq!(formats, vec![Format::Nl, Format::NlPc]);
    assert!(s.iter().all(|s| s.id == "multi"));
}

#[test]
fn records_without_pseudo_code_fall_back_to_nl_or_are_dropped() {
    let mut counts = MixCounts::default();
    let s = mixer("nl-pc").samples(&no_pc(), &mut counts);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].format, Format::Nl);
    assert_eq!(s[0].messages, no_pc().messages);
    assert_eq!(counts.fallbacks_to_nl, 1);

    // Both renditions of a record without pseudo-code: one nl sample, not two.
    let mut counts = MixCounts::default();
    let s = mixer("nl+nl-pc").samples(&no_pc(), &mut counts);
    assert_eq!(s.len(), 1);
    assert_eq!(counts.fallbacks_to_nl, 1);

    let mut strict = mixer("nl+nl-pc");
    strict.require_pc = true;
    let mut counts = MixCounts::default();
    let s = strict.samples(&no_pc(), &mut counts);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].format, Format::Nl);
    assert_eq!(counts.dropped_without_pc, 1);
    assert_eq!(counts.fallbacks_to_nl, 0);
    strict.mix = "pc".parse().unwrap();
    assert!(strict.samples(&no_pc(), &mut counts).is_empty());
}

fn blend_choices(mix: &Mix, seed: u64, n: usize) -> Vec<Vec<Format>> {
    (0..n)
        .map(|i| mix.formats_for(seed, &format!("record-{i}")).to_vec())
        .collect()
}

#[test]
fn blends_are_deterministic_by_seed_and_follow_their_weights() {
    let mix: Mix = "nl:0.25,nl-pc:0.75".parse().unwrap();
    let a = blend_choices(&mix, 42, 4000);
    assert_eq!(a, blend_choices(&mix, 42, 4000), "same seed, same picks");
    assert_ne!(
        a,
        blend_choices(&mix, 43, 4000),
        "another seed, other picks"
    );
    let nl = a.iter().filter(|f| f[..] == [Format::Nl]).count();
    assert!(
        (900..1100).contains(&nl),
        "{nl} of 4000 picked nl at weight 0.25"
    );
    // Each record's pick does not depend on which other records are there.
    let alone = mix.formats_for(42, "record-17");
    assert_eq!(alone, &a[17][..]);
    // A group entry gives both renditions.
    let mix: Mix = "nl:0.5,nl+pc:0.5".parse().unwrap();
    assert!(blend_choices(&mix, 1, 200)
        .iter()
        .any(|f| f[..] == [Format::Nl, Format::Pc]));
}

#[test]
fn mixes_on_the_shipped_examples_through_the_pipeline() {
    let files = common::examples();
    for (mix, formats) in [
        ("nl", vec!["nl"]),
        ("pc", vec!["nl", "pc"]),
        ("nl-pc", vec!["nl", "nl-pc"]),
        ("nl:0.5,nl-pc:0.5", vec!["nl", "nl-pc"]),
        ("nl+nl-pc", vec!["nl", "nl-pc"]),
    ] {
        let p = common::pipeline(mix, "auto", 4096);
        let (samples, stats) = p.encode_all(&files).unwrap();
        let keys: Vec<&str> = stats.samples.keys().map(String::as_str).collect();
        assert_eq!(keys, formats, "{mix}");
        assert_eq!(samples.len() as u64, stats.sample_count());
        assert!(stats.records >= 120, "{mix}");
    }
    let both = common::pipeline("nl+nl-pc", "auto", 4096);
    let (_, stats) = both.encode_all(&files).unwrap();
    // Records with pseudo-code give two samples, those without give one.
    assert_eq!(
        stats.sample_count(),
        2 * stats.records - stats.mix.fallbacks_to_nl
    );
}

#[test]
fn a_record_falls_back_once_however_many_renditions_needed_pseudo_code() {
    let mut counts = MixCounts::default();
    let s = mixer("pc+nl-pc").samples(&no_pc(), &mut counts);
    assert_eq!(s.len(), 1);
    assert_eq!(counts.fallbacks_to_nl, 1);
}
