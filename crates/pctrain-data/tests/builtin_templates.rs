//! Every built-in template renders its family's format exactly, and its trained spans are the
//! assistant contents with their closing token.

use pctrain_data::template::{builtin, BUILTINS};
use pctrain_data::{ChatTemplate, Message, Role, SpecialTokens};

fn conversation() -> Vec<Message> {
    vec![
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "Hi"),
        Message::new(Role::Assistant, "Hello!"),
        Message::new(Role::User, "Bye"),
        Message::new(Role::Assistant, "Goodbye."),
    ]
}

fn special() -> SpecialTokens {
    SpecialTokens {
        bos: Some("<s>".into()),
        eos: Some("</s>".into()),
        ..Default::default()
    }
}

fn expected(name: &str) -> &'static str {
    match name {
        "tulu" => "<s><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!</s>\n<|user|>\nBye\n<|assistant|>\nGoodbye.</s>",
        "llama3" => "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nGoodbye.<|eot_id|>",
        "mistral" => "<s>[INST] Be brief.\n\nHi[/INST] Hello!</s>[INST] Bye[/INST] Goodbye.</s>",
        "granite" => "<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Hi<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>Hello!<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Bye<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>Goodbye.<|end_of_text|>\n",
        "chatml" => "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nGoodbye.<|im_end|>\n",
        other => panic!("no expectation for {other}"),
    }
}

fn closing(name: &str) -> &'static str {
    match name {
        "llama3" => "<|eot_id|>",
        "granite" => "<|end_of_text|>",
        "chatml" => "<|im_end|>",
        _ => "</s>",
    }
}

#[test]
fn every_builtin_renders_its_format() {
    for b in BUILTINS {
        let t = ChatTemplate::from_builtin(&b).unwrap();
        let text = t.render(&conversation(), false, &special()).unwrap();
        assert_eq!(text, expected(b.name), "template {}", b.name);
    }
}

#[test]
fn every_builtin_spans_the_assistant_turns() {
    for b in BUILTINS {
        let t = ChatTemplate::from_builtin(&b).unwrap();
        let r = t
            .render_with_spans("c", &conversation(), &special())
            .unwrap();
        let spans: Vec<&str> = r.spans.iter().map(|s| &r.text[s.clone()]).collect();
        let c = closing(b.name);
        assert_eq!(
            spans,
            vec![format!("Hello!{c}"), format!("Goodbye.{c}")],
            "template {}",
            b.name
        );
    }
}

#[test]
fn generation_prompts_open_an_assistant_turn() {
    let msgs = &conversation()[..4];
    for (name, tail) in [
        ("tulu", "<|user|>\nBye\n<|assistant|>\n"),
        (
            "llama3",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        ("granite", "<|start_of_role|>assistant<|end_of_role|>"),
        ("chatml", "<|im_start|>assistant\n"),
        ("mistral", "[INST] Bye[/INST]"),
    ] {
        let t = ChatTemplate::from_builtin(builtin(name).unwrap()).unwrap();
        let text = t.render(msgs, true, &special()).unwrap();
        assert!(text.ends_with(tail), "{name}: {text:?}");
    }
}

#[test]
fn templates_without_bos_leave_it_out() {
    let t = ChatTemplate::from_builtin(builtin("tulu").unwrap()).unwrap();
    let no_bos = SpecialTokens {
        eos: Some("</s>".into()),
        ..Default::default()
    };
    let text = t.render(&conversation()[1..3], false, &no_bos).unwrap();
    assert_eq!(text, "<|user|>\nHi\n<|assistant|>\nHello!</s>");
}
