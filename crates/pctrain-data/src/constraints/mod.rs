//! Verifiable constraints on an answer, as IFEval (Zhou et al., 2023) states them: an
//! instruction id (`punctuation:no_comma`) with its arguments (`kwargs`), and the check of an
//! answer against each. Records carry them as IFEval's lines do: `instruction_id_list` and
//! `kwargs`, two lists of the same length.

mod instructions;
mod text;

use serde_json::{Map, Value};

pub use instructions::{Instruction, Pattern, Relation, CONSTRAINED, IDS};
pub use text::{count_sentences, count_words, detect_language};

/// One constraint of a prompt: an instruction id of [`IDS`] and its arguments (a JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub id: String,
    pub kwargs: Value,
}

impl Constraint {
    /// The checkable instruction; `Err` says what is wrong with the id or its arguments.
    pub fn instruction(&self) -> Result<Instruction, String> {
        Instruction::parse(&self.id, &self.kwargs)
    }
}

/// The constraints of a JSON record (its `instruction_id_list` and `kwargs`): none when the
/// record has no `instruction_id_list`. Only their shape is checked here (a list of ids, a list
/// of as many argument objects); what each id and its arguments mean is checked where they are
/// used ([`Constraint::instruction`], [`check_constraints`]), so that data for other checkers
/// still trains. The error names the field and entry.
pub fn read_constraints(obj: &Map<String, Value>) -> Result<Vec<Constraint>, String> {
    let ids: Vec<&str> = match obj.get("instruction_id_list") {
        None | Some(Value::Null) => {
            return match obj.get("kwargs") {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(_) => Err("field `kwargs` is given without `instruction_id_list`".into()),
            }
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().ok_or_else(|| {
                    format!("instruction_id_list[{i}]: expected a string, found {v}")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "field `instruction_id_list`: expected a list of instruction ids, found {other}"
            ))
        }
    };
    let kwargs: Vec<Value> = match obj.get("kwargs") {
        Some(Value::Array(k)) if k.len() == ids.len() => k.clone(),
        Some(Value::Array(k)) => {
            return Err(format!(
                "field `kwargs` has {} entries for {} instructions",
                k.len(),
                ids.len()
            ))
        }
        None | Some(Value::Null) if ids.is_empty() => Vec::new(),
        None | Some(Value::Null) => {
            return Err(format!(
                "field `kwargs` is missing: `instruction_id_list` has {} instructions, each needs \
                 its arguments object",
                ids.len()
            ))
        }
        Some(other) => {
            return Err(format!(
                "field `kwargs`: expected a list of objects, found {other}"
            ))
        }
    };
    ids.iter()
        .zip(kwargs)
        .enumerate()
        .map(|(i, (id, kwargs))| match kwargs {
            Value::Object(_) | Value::Null => Ok(Constraint {
                id: id.to_string(),
                kwargs,
            }),
            other => Err(format!("kwargs[{i}]: expected an object, found {other}")),
        })
        .collect()
}

/// Each constraint as a checkable instruction; the error names the entry and what is wrong with
/// its id or arguments.
pub fn check_constraints(constraints: &[Constraint]) -> Result<Vec<Instruction>, String> {
    constraints
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.instruction()
                .map_err(|e| format!("instruction_id_list[{i}] with kwargs[{i}]: {e}"))
        })
        .collect()
}

/// `constraints` as IFEval's two fields: `(instruction_id_list, kwargs)`.
pub fn constraint_fields(constraints: &[Constraint]) -> (Value, Value) {
    (
        constraints
            .iter()
            .map(|c| Value::from(c.id.as_str()))
            .collect(),
        constraints.iter().map(|c| c.kwargs.clone()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: Value) -> Result<Vec<Constraint>, String> {
        read_constraints(v.as_object().unwrap())
    }

    #[test]
    fn constraints_are_read_and_written_back() {
        let line = json!({
            "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
            "kwargs": [{}, {"keywords": ["tide"]}],
        });
        let c = read(line.clone()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].id, "keywords:existence");
        let (ids, kwargs) = constraint_fields(&c);
        assert_eq!(ids, line["instruction_id_list"]);
        assert_eq!(kwargs, line["kwargs"]);
        assert!(read(json!({})).unwrap().is_empty());
    }

    #[test]
    fn bad_constraints_name_the_entry_and_what_is_wrong() {
        let check = |v: Value| {
            check_constraints(&read(v).unwrap())
                .map(|_| ())
                .unwrap_err()
        };
        let e = check(json!({"instruction_id_list": ["keywords:rhymes"], "kwargs": [{}]}));
        assert!(
            e.contains("instruction_id_list[0]") && e.contains("unknown instruction id"),
            "{e}"
        );
        let e = check(json!({
            "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
            "kwargs": [{}, {"num_words": "many", "relation": "at least"}],
        }));
        assert!(
            e.contains("kwargs[1]") && e.contains("`num_words` must be"),
            "{e}"
        );
        let e = read(json!({"instruction_id_list": ["punctuation:no_comma"]})).unwrap_err();
        assert!(e.contains("`kwargs` is missing"), "{e}");
        let e = read(json!({"instruction_id_list": ["a", "b"], "kwargs": [{}]})).unwrap_err();
        assert!(e.contains("2 instructions"), "{e}");
        let e = read(json!({"instruction_id_list": [3], "kwargs": [{}]})).unwrap_err();
        assert!(e.contains("expected a string"), "{e}");
        let e = read(json!({"instruction_id_list": ["a"], "kwargs": [3]})).unwrap_err();
        assert!(e.contains("kwargs[0]: expected an object"), "{e}");
        let e = read(json!({"kwargs": [{}]})).unwrap_err();
        assert!(e.contains("without `instruction_id_list`"), "{e}");
        // Ids of other checkers are read as they are.
        let other =
            read(json!({"instruction_id_list": ["count:word_count_range"], "kwargs": [{}]}));
        assert_eq!(other.unwrap()[0].id, "count:word_count_range");
    }
}
