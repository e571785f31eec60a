//! The one table of a model's parameters: every tensor it holds, named as transformers and PEFT
//! name it, with its shape, and the order in which those that train are listed, saved,
//! optimized and given a gradient buffer. No other place lists or numbers them.

use crate::backward::TrainMode;
use crate::config::ModelConfig;
use crate::lora::Target;

/// A weight of a decoder layer; `as usize` is its index in [`LayerParam::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerParam {
    InputNorm,
    Q,
    K,
    V,
    O,
    PostNorm,
    Gate,
    Up,
    Down,
}

impl LayerParam {
    /// A layer's weights in their fixed order.
    pub const ALL: [LayerParam; 9] = [
        LayerParam::InputNorm,
        LayerParam::Q,
        LayerParam::K,
        LayerParam::V,
        LayerParam::O,
        LayerParam::PostNorm,
        LayerParam::Gate,
        LayerParam::Up,
        LayerParam::Down,
    ];

    /// Its name within `model.layers.{i}` (before `.weight`).
    pub fn name(self) -> &'static str {
        match self {
            LayerParam::InputNorm => "input_layernorm",
            LayerParam::Q => "self_attn.q_proj",
            LayerParam::K => "self_attn.k_proj",
            LayerParam::V => "self_attn.v_proj",
            LayerParam::O => "self_attn.o_proj",
            LayerParam::PostNorm => "post_attention_layernorm",
            LayerParam::Gate => "mlp.gate_proj",
            LayerParam::Up => "mlp.up_proj",
            LayerParam::Down => "mlp.down_proj",
        }
    }

    /// The projection a LoRA target adapts.
    pub fn of(target: Target) -> LayerParam {
        match target {
            Target::Q => LayerParam::Q,
            Target::K => LayerParam::K,
            Target::V => LayerParam::V,
            Target::O => LayerParam::O,
            Target::Gate => LayerParam::Gate,
            Target::Up => LayerParam::Up,
            Target::Down => LayerParam::Down,
        }
    }

    /// `[hidden]` for the norms, `[out, in]` for the projections.
    pub fn shape(self, c: &ModelConfig) -> Vec<usize> {
        let target = match self {
            LayerParam::InputNorm | LayerParam::PostNorm => return vec![c.hidden_size],
            LayerParam::Q => Target::Q,
            LayerParam::K => Target::K,
            LayerParam::V => Target::V,
            LayerParam::O => Target::O,
            LayerParam::Gate => Target::Gate,
            LayerParam::Up => Target::Up,
            LayerParam::Down => Target::Down,
        };
        let (out, inp) = target.shape(c);
        vec![out, inp]
    }
}

/// One tensor of a model or of its adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Param {
    /// `[vocab, hidden]`
    Embed,
    Layer(usize, LayerParam),
    /// The final norm, `[hidden]`.
    Norm,
    /// `[vocab, hidden]`, when not tied to the embeddings.
    LmHead,
    /// LoRA `A` of a layer's target, `[r, in]`.
    LoraA(usize, Target),
    /// LoRA `B` of a layer's target, `[out, r]`.
    LoraB(usize, Target),
}

impl Param {
    /// Its key in the model's (transformers) or adapter's (PEFT) safetensors.
    pub fn name(self) -> String {
        match self {
            Param::Embed => "model.embed_tokens.weight".into(),
            Param::Layer(l, w) => format!("model.layers.{l}.{}.weight", w.name()),
            Param::Norm => "model.norm.weight".into(),
            Param::LmHead => "lm_head.weight".into(),
            Param::LoraA(l, t) => format!("{}.lora_A.weight", t.peft_prefix(l)),
            Param::LoraB(l, t) => format!("{}.lora_B.weight", t.peft_prefix(l)),
        }
    }
}

/// What trains in `mode`, in the one order: LoRA `A` then `B` for each layer and each adapted
/// target (`adapted(layer, target)`), or the embeddings, every layer's weights, the final norm
/// and the output projection when it is not tied to the embeddings (`lm_head`).
pub fn trainable_params(
    layers: usize,
    mode: TrainMode,
    lm_head: bool,
    adapted: impl Fn(usize, Target) -> bool,
) -> Vec<Param> {
    let layers = 0..layers;
    match mode {
        TrainMode::Lora => layers
            .flat_map(|l| Target::ALL.into_iter().map(move |t| (l, t)))
            .filter(|&(l, t)| adapted(l, t))
            .flat_map(|(l, t)| [Param::LoraA(l, t), Param::LoraB(l, t)])
            .collect(),
        TrainMode::Full => std::iter::once(Param::Embed)
            .chain(layers.flat_map(|l| LayerParam::ALL.map(|w| Param::Layer(l, w))))
            .chain([Param::Norm])
            .chain(lm_head.then_some(Param::LmHead))
            .collect(),
    }
}

/// Values that belong to the trainable tensors (their gradients, their gradient buffers), placed
/// by what they belong to.
pub struct Placed<T> {
    pub embed: Option<T>,
    pub layers: Vec<LayerPlaced<T>>,
    pub norm: Option<T>,
    pub lm_head: Option<T>,
}

/// A layer's share of [`Placed`]: each adapter's `(A, B)` by [`Target`], each weight's by
/// [`LayerParam`].
pub struct LayerPlaced<T> {
    pub lora: [Option<(T, T)>; 7],
    pub weights: [Option<T>; 9],
}

impl<T> LayerPlaced<T> {
    /// The value of weight `w`, when it trains.
    pub fn weight(&mut self, w: LayerParam) -> Option<&mut T> {
        self.weights[w as usize].as_mut()
    }
}

impl<T> Placed<Option<T>> {
    /// The value placed for `p`, taken out; `None` when `p` has no place or no value yet.
    pub fn take(&mut self, p: Param) -> Option<T> {
        let slot = match p {
            Param::Embed => &mut self.embed,
            Param::Layer(l, w) => &mut self.layers[l].weights[w as usize],
            Param::Norm => &mut self.norm,
            Param::LmHead => &mut self.lm_head,
            Param::LoraA(l, t) => return self.layers[l].lora[t as usize].as_mut()?.0.take(),
            Param::LoraB(l, t) => return self.layers[l].lora[t as usize].as_mut()?.1.take(),
        };
        slot.as_mut()?.take()
    }
}

/// A part of the trainable tensors, as a backward reaches their gradients: it finishes adding to
/// them part by part, in [`Part::order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The final norm and the untied output projection (after the loss and the final norm).
    Head,
    /// A decoder layer's weights or adapters (after its backward).
    Layer(usize),
    /// The embeddings (at the end, the output projection's share included when tied).
    Embeddings,
}

impl Part {
    /// The parts of a model of `layers` in the order a backward finishes them: the head, the
    /// layers from the last, the embeddings.
    pub fn order(layers: usize) -> impl Iterator<Item = Part> {
        std::iter::once(Part::Head)
            .chain((0..layers).rev().map(Part::Layer))
            .chain(std::iter::once(Part::Embeddings))
    }
}

/// Where a part's values are placed: a weight's, or an adapter's `A` and `B` together.
enum Slot<'a, T> {
    One(Param, &'a mut Option<T>),
    Pair(usize, Target, &'a mut Option<(T, T)>),
}

impl<T> Placed<T> {
    /// Where `part`'s values are placed, in the table's order.
    fn slots(&mut self, part: Part) -> Vec<Slot<'_, T>> {
        match part {
            Part::Head => vec![
                Slot::One(Param::Norm, &mut self.norm),
                Slot::One(Param::LmHead, &mut self.lm_head),
            ],
            Part::Layer(l) => {
                let layer = &mut self.layers[l];
                let lora = Target::ALL.into_iter().zip(layer.lora.iter_mut());
                let weights = LayerParam::ALL.into_iter().zip(layer.weights.iter_mut());
                lora.map(|(t, v)| Slot::Pair(l, t, v))
                    .chain(weights.map(|(w, v)| Slot::One(Param::Layer(l, w), v)))
                    .collect()
            }
            Part::Embeddings => vec![Slot::One(Param::Embed, &mut self.embed)],
        }
    }

    /// `part`'s values, each read out of its slot by `one` (an adapter's `A` and `B` by `pair`),
    /// with their parameters.
    fn part_values<'a, U>(
        &'a mut self,
        part: Part,
        one: impl Fn(&'a mut Option<T>) -> Option<U>,
        pair: impl Fn(&'a mut Option<(T, T)>) -> Option<(U, U)>,
    ) -> Vec<(Param, U)> {
        let mut out = Vec::new();
        for slot in self.slots(part) {
            match slot {
                Slot::One(p, v) => out.extend(one(v).map(|v| (p, v))),
                Slot::Pair(l, t, v) => out.extend(
                    pair(v)
                        .into_iter()
                        .flat_map(|(a, b)| [(Param::LoraA(l, t), a), (Param::LoraB(l, t), b)]),
                ),
            }
        }
        out
    }

    /// The values placed for `part`'s trainable tensors, with their parameters (in the table's
    /// order).
    pub fn part_mut(&mut self, part: Part) -> Vec<(Param, &mut T)> {
        self.part_values(part, Option::as_mut, |v| v.as_mut().map(|(a, b)| (a, b)))
    }

    /// The values placed for `part`'s trainable tensors, taken out, with their parameters (in
    /// the table's order).
    pub fn take_part(&mut self, part: Part) -> Vec<(Param, T)> {
        self.part_values(part, Option::take, Option::take)
    }
}

/// `values`, one per parameter of `params` (in their order), placed for a model of `layers`.
pub fn place<T>(layers: usize, params: &[Param], values: impl IntoIterator<Item = T>) -> Placed<T> {
    let mut placed = Placed {
        embed: None,
        layers: (0..layers)
            .map(|_| LayerPlaced {
                lora: Default::default(),
                weights: Default::default(),
            })
            .collect(),
        norm: None,
        lm_head: None,
    };
    let mut pending_a = None;
    for (&p, v) in params.iter().zip(values) {
        match p {
            Param::Embed => placed.embed = Some(v),
            Param::Layer(l, w) => placed.layers[l].weights[w as usize] = Some(v),
            Param::Norm => placed.norm = Some(v),
            Param::LmHead => placed.lm_head = Some(v),
            // The table lists an adapter's A just before its B.
            Param::LoraA(..) => pending_a = Some(v),
            Param::LoraB(l, t) => {
                let a = pending_a.take().expect("A before B");
                placed.layers[l].lora[t as usize] = Some((a, v));
            }
        }
    }
    placed
}
