//! The pseudo-code pipeline: a teacher LLM writes each instruction as pseudo-code, a local parser
//! and the teacher as a judge check it, and failures are repaired or given up
//! (`pctrain data pseudo-code`); or, for records with verifiable constraints, it is written from
//! them (`--from-constraints`).

pub mod check;
pub mod error;
pub mod from_constraints;
pub mod prompts;
pub mod run;
mod steps;
pub mod teacher;

pub use check::{check_structure, Checked};
pub use error::{PseudoError, Result};
pub use from_constraints::{
    pseudo_code_from_constraints, write_from_constraints, ConstraintSummary,
};
pub use prompts::{ChatMessage, Prompts, Stage};
pub use run::{parse_verdict, rejects_path, run, summary_path, OnFailure, RunConfig, Summary};
pub use teacher::{ApiKey, Reply, Teacher, TeacherConfig, TeacherError};
