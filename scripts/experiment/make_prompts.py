#!/usr/bin/env python3
"""Prompts with verifiable constraints, in IFEval's line shape, for the pseudo-code experiment.

Base tasks (topics x kinds of writing, written here) are combined with one to three constraints
drawn from IFEval's instruction types, each type phrased in several ways written here. Five types
are held out (never drawn), so that a model trained on these prompts can be scored on seen and
unseen types apart. A prompt that shares a run of 8 words with any IFEval prompt is drawn again;
the count of such draws is reported. Seeded: the same seed gives the same file.

    python3 scripts/experiment/make_prompts.py --ifeval ../shared/data/ifeval_input_data.jsonl \
        --count 2600 --seed 1 --output prompts.jsonl --stats prompts.stats.json
"""

import argparse
import json
import os
import random
import re
import sys

HELD_OUT = [
    "startend:quotation",
    "detectable_format:title",
    "keywords:letter_frequency",
    "detectable_content:postscript",
    "combination:two_responses",
]

TOPICS = [
    "the history of the bicycle", "urban beekeeping", "a rainy afternoon in a small harbour town",
    "learning to play the cello as an adult", "the water cycle", "public libraries",
    "the first day at a new job", "volcanoes", "composting at home", "the life of a lighthouse keeper",
    "night trains across Europe", "the invention of the printing press", "saving money on groceries",
    "a robot that learns to paint", "migratory birds", "the benefits of walking meetings",
    "a village festival", "remote work", "the moons of Jupiter", "baking sourdough bread",
    "a lost umbrella", "chess for beginners", "desert plants", "the ethics of self-driving cars",
    "a grandmother's recipe book", "coral reefs", "time management for students", "old maps",
    "a talking cat who runs a bakery", "electric scooters in cities", "the Silk Road",
    "how vaccines are tested", "a mountain hut in winter", "board games on family evenings",
    "recycling plastic", "the Roman aqueducts", "a detective who is afraid of the dark",
    "the smell of fresh paint", "learning a second language", "solar panels on apartment roofs",
    "a journey by canoe", "street food", "the history of jazz", "sleep and memory",
    "a school garden", "a spaceship's cook", "the first telephone call", "wild mushrooms",
    "kindness between neighbours", "a marathon runner's last mile", "tea ceremonies",
    "the future of newspapers", "an abandoned amusement park", "honeybees and pesticides",
    "a museum at night", "the Arctic ice", "handwriting in the digital age",
    "a stray dog that finds a home", "community radio", "the physics of rainbows",
]

KINDS = {
    "poem": ["Write a poem about {t}.", "Compose a short poem on {t}.", "Write a few lines of verse about {t}."],
    "story": ["Write a short story about {t}.", "Tell a brief story involving {t}.", "Write a tale that centres on {t}."],
    "essay": ["Write an essay about {t}.", "Write a short essay discussing {t}.", "Draft an essay on {t}."],
    "blog": ["Write a blog post about {t}.", "Draft a blog entry on {t}.", "Write a post for a personal blog about {t}."],
    "letter": ["Write a letter to a friend about {t}.", "Write a letter to the editor of a local paper about {t}.", "Write a letter to your younger self about {t}."],
    "speech": ["Write a speech about {t}.", "Draft a short talk for a school assembly about {t}.", "Write a toast about {t} for a dinner party."],
    "summary": ["Summarise what people should know about {t}.", "Give a summary of the main facts about {t}.", "Write an overview of {t}."],
    "advert": ["Write an advertisement for a product related to {t}.", "Write a radio advert inspired by {t}.", "Create a pitch for a start-up built around {t}."],
    "dialogue": ["Write a dialogue between two friends about {t}.", "Write a conversation between a teacher and a student about {t}.", "Write a short scene in which two strangers argue about {t}."],
    "explanation": ["Explain {t} to a ten-year-old.", "Describe {t} in plain words.", "Explain why {t} matters."],
    "review": ["Write a review of a book about {t}.", "Review an imaginary film about {t}.", "Write a critique of a documentary on {t}."],
    "question": ["Is it worth learning about {t}?", "Would a newcomer enjoy reading about {t}?", "Is interest in {t} greater today than fifty years ago?"],
}

KEYWORDS = [
    "window", "silver", "journey", "balance", "garden", "whisper", "engine", "harvest", "compass",
    "lantern", "river", "ladder", "thunder", "pocket", "orchard", "signal", "puzzle", "blanket",
    "meadow", "mirror", "anchor", "candle", "festival", "pepper", "rhythm", "shadow", "velvet",
]
FORBIDDEN = [
    "very", "really", "thing", "good", "bad", "nice", "important", "many", "also", "just",
    "great", "people", "always", "never", "simple",
]
LANGUAGES = {"fr": "French", "es": "Spanish", "de": "German", "it": "Italian", "pt": "Portuguese"}
FIRST_WORDS = ["today", "however", "finally", "first", "meanwhile", "yesterday", "still", "then"]
END_PHRASES = [
    "Is there anything else I can help with?", "That is all for now.", "Thank you for reading.",
    "Let me know what you think.", "Until next time.",
]
SPLITTERS = ["Section", "SECTION", "Part", "PART"]


def choice(rng, items):
    return items[rng.randrange(len(items))]


def relation(rng):
    return choice(rng, ["less than", "at least"])


# Each type: (kwargs sampler, phrasings). A phrasing is a function of the kwargs (and the
# base task, for repeat_prompt).
def kw_existence(rng, task):
    a, b = rng.sample(KEYWORDS, 2)
    return {"keywords": [a, b]}


def kw_frequency(rng, task):
    rel = relation(rng)
    n = rng.randint(2, 4) if rel == "at least" else rng.randint(2, 3)
    return {"keyword": choice(rng, KEYWORDS), "frequency": n, "relation": rel}


def kw_forbidden(rng, task):
    return {"forbidden_words": rng.sample(FORBIDDEN, rng.randint(2, 3))}


def lang(rng, task):
    return {"language": choice(rng, list(LANGUAGES))}


def sentences(rng, task):
    rel = relation(rng)
    n = rng.randint(3, 8) if rel == "at least" else rng.randint(4, 10)
    return {"num_sentences": n, "relation": rel}


def paragraphs(rng, task):
    return {"num_paragraphs": rng.randint(2, 4)}


def words(rng, task):
    rel = relation(rng)
    n = choice(rng, [50, 80, 100, 120, 150]) if rel == "at least" else choice(rng, [60, 80, 100, 150, 200])
    return {"num_words": n, "relation": rel}


def nth_first(rng, task):
    n = rng.randint(2, 4)
    return {"num_paragraphs": n, "nth_paragraph": rng.randint(1, n), "first_word": choice(rng, FIRST_WORDS)}


def placeholders(rng, task):
    return {"num_placeholders": rng.randint(1, 3)}


def bullets(rng, task):
    return {"num_bullets": rng.randint(2, 5)}


def highlights(rng, task):
    return {"num_highlights": rng.randint(1, 3)}


def sections(rng, task):
    return {"section_spliter": choice(rng, SPLITTERS), "num_sections": rng.randint(2, 4)}


def repeat(rng, task):
    return {"prompt_to_repeat": task}


def end_phrase(rng, task):
    return {"end_phrase": choice(rng, END_PHRASES)}


def capital_freq(rng, task):
    rel = relation(rng)
    n = rng.randint(2, 5) if rel == "at least" else rng.randint(2, 4)
    return {"capital_frequency": n, "capital_relation": rel}


def none(rng, task):
    return {}


def more_or_fewer(k, at_least, less_than):
    return at_least if k == "at least" else less_than


TYPES = {
    "keywords:existence": (kw_existence, [
        lambda k: f"Be sure to use the words {k['keywords'][0]} and {k['keywords'][1]} somewhere in it.",
        lambda k: f"Work the words \"{k['keywords'][0]}\" and \"{k['keywords'][1]}\" into your text.",
        lambda k: f"Both {k['keywords'][0]} and {k['keywords'][1]} have to show up in what you write.",
    ]),
    "keywords:frequency": (kw_frequency, [
        lambda k: more_or_fewer(k["relation"],
                                f"The word {k['keyword']} must come up {k['frequency']} times or more.",
                                f"Mention the word {k['keyword']} fewer than {k['frequency']} times."),
        lambda k: more_or_fewer(k["relation"],
                                f"Repeat the word \"{k['keyword']}\" no fewer than {k['frequency']} times.",
                                f"Keep the word \"{k['keyword']}\" under {k['frequency']} uses."),
        lambda k: more_or_fewer(k["relation"],
                                f"Say {k['keyword']} at least {k['frequency']} times.",
                                f"Use {k['keyword']} less than {k['frequency']} times."),
    ]),
    "keywords:forbidden_words": (kw_forbidden, [
        lambda k: "Steer clear of these words: " + ", ".join(k["forbidden_words"]) + ".",
        lambda k: "None of the following words may appear: " + " / ".join(k["forbidden_words"]) + ".",
        lambda k: "Write it without the words " + " or ".join(k["forbidden_words"]) + ".",
    ]),
    "language:response_language": (lang, [
        lambda k: f"Write everything in {LANGUAGES[k['language']]} and in no other language.",
        lambda k: f"The whole reply has to be in {LANGUAGES[k['language']]}.",
        lambda k: f"Answer only in {LANGUAGES[k['language']]}; English is not allowed.",
    ]),
    "length_constraints:number_sentences": (sentences, [
        lambda k: more_or_fewer(k["relation"],
                                f"It should run to {k['num_sentences']} sentences or more.",
                                f"Keep it under {k['num_sentences']} sentences."),
        lambda k: more_or_fewer(k["relation"],
                                f"Use no fewer than {k['num_sentences']} sentences.",
                                f"Write fewer than {k['num_sentences']} sentences in total."),
        lambda k: more_or_fewer(k["relation"],
                                f"Make it at least {k['num_sentences']} sentences long.",
                                f"Your text must have less than {k['num_sentences']} sentences."),
    ]),
    "length_constraints:number_paragraphs": (paragraphs, [
        lambda k: f"Split it into exactly {k['num_paragraphs']} paragraphs, with a line holding only *** between paragraphs.",
        lambda k: f"Give {k['num_paragraphs']} paragraphs and put the markdown rule *** between each pair of them.",
        lambda k: f"Use {k['num_paragraphs']} paragraphs in all, divided from each other by ***.",
    ]),
    "length_constraints:number_words": (words, [
        lambda k: more_or_fewer(k["relation"],
                                f"It must be {k['num_words']} words or longer.",
                                f"Stay under {k['num_words']} words."),
        lambda k: more_or_fewer(k["relation"],
                                f"Write no fewer than {k['num_words']} words.",
                                f"Use fewer than {k['num_words']} words in total."),
        lambda k: more_or_fewer(k["relation"],
                                f"The length should reach at least {k['num_words']} words.",
                                f"Keep the word count below {k['num_words']}."),
    ]),
    "length_constraints:nth_paragraph_first_word": (nth_first, [
        lambda k: f"Write {k['num_paragraphs']} paragraphs separated by blank lines, and start paragraph number {k['nth_paragraph']} with the word \"{k['first_word']}\".",
        lambda k: f"Use {k['num_paragraphs']} paragraphs (a blank line between each); paragraph {k['nth_paragraph']} has to begin with {k['first_word']}.",
        lambda k: f"Your text needs {k['num_paragraphs']} paragraphs split by empty lines, where the first word of paragraph {k['nth_paragraph']} is {k['first_word']}.",
    ]),
    "detectable_content:number_placeholders": (placeholders, [
        lambda k: f"Leave at least {k['num_placeholders']} blanks to fill in later, written in square brackets like [city].",
        lambda k: f"Include {k['num_placeholders']} or more placeholders in square brackets, for instance [date].",
        lambda k: f"Put no fewer than {k['num_placeholders']} bracketed placeholders such as [name] in it.",
    ]),
    "detectable_format:number_bullet_lists": (bullets, [
        lambda k: f"Give exactly {k['num_bullets']} points as a markdown list, each line starting with *.",
        lambda k: f"Format the main ideas as {k['num_bullets']} bullet points using markdown (* like this), no more and no fewer.",
        lambda k: f"Include a bulleted list of precisely {k['num_bullets']} items written with *.",
    ]),
    "detectable_format:constrained_response": (none, [
        lambda k: "Reply with one of these exact phrases: \"My answer is yes.\", \"My answer is no.\", \"My answer is maybe.\"",
        lambda k: "Your reply must be one of: My answer is yes. / My answer is no. / My answer is maybe.",
        lambda k: "Choose your reply from \"My answer is yes.\", \"My answer is no.\" or \"My answer is maybe.\" and say nothing else.",
    ]),
    "detectable_format:number_highlighted_sections": (highlights, [
        lambda k: f"Mark at least {k['num_highlights']} parts in markdown italics, like *a key idea*.",
        lambda k: f"Highlight {k['num_highlights']} or more passages with single asterisks, for instance *this one*.",
        lambda k: f"Emphasise at least {k['num_highlights']} phrases using markdown, e.g. *main point*.",
    ]),
    "detectable_format:multiple_sections": (sections, [
        lambda k: f"Organise it into {k['num_sections']} sections, heading each one {k['section_spliter']} 1, {k['section_spliter']} 2 and so on.",
        lambda k: f"Divide it into {k['num_sections']} parts labelled \"{k['section_spliter']} X\", where X is the part's number.",
        lambda k: f"Use {k['num_sections']} numbered sections, each starting with {k['section_spliter']} followed by its number.",
    ]),
    "detectable_format:json_format": (none, [
        lambda k: "Return the entire output as valid JSON.",
        lambda k: "Format all of it as JSON; you may use a markdown code block.",
        lambda k: "The whole answer must parse as JSON.",
    ]),
    "combination:repeat_prompt": (repeat, [
        lambda k: f"Before answering, copy this request exactly as it is: {k['prompt_to_repeat']} Then give your answer.",
        lambda k: f"Start by restating the following request word for word, with nothing before it: {k['prompt_to_repeat']} After that, answer it.",
        lambda k: f"First write out the request below unchanged, then respond to it. Request: {k['prompt_to_repeat']}",
    ]),
    "startend:end_checker": (end_phrase, [
        lambda k: f"End with the exact words \"{k['end_phrase']}\" and write nothing after them.",
        lambda k: f"The very last words must be: {k['end_phrase']}",
        lambda k: f"Close with this sentence, and nothing after it: {k['end_phrase']}",
    ]),
    "change_case:capital_word_frequency": (capital_freq, [
        lambda k: more_or_fewer(k["capital_relation"],
                                f"Write at least {k['capital_frequency']} words entirely in capitals.",
                                f"Write fewer than {k['capital_frequency']} words entirely in capitals."),
        lambda k: more_or_fewer(k["capital_relation"],
                                f"Put {k['capital_frequency']} or more words in ALL CAPS for emphasis.",
                                f"Use fewer than {k['capital_frequency']} all-caps words."),
        lambda k: more_or_fewer(k["capital_relation"],
                                f"No fewer than {k['capital_frequency']} words should be fully capitalised.",
                                f"Keep fully capitalised words under {k['capital_frequency']}."),
    ]),
    "change_case:english_capital": (none, [
        lambda k: "Write it all in English, using capital letters only.",
        lambda k: "Every letter of your reply must be an English capital letter.",
        lambda k: "Answer in English and in uppercase from start to end.",
    ]),
    "change_case:english_lowercase": (none, [
        lambda k: "Write it all in English, using lowercase letters only; no capitals at all.",
        lambda k: "Do not use a single capital letter; the reply must be in English and lowercase.",
        lambda k: "Answer in English in small letters only.",
    ]),
    "punctuation:no_comma": (none, [
        lambda k: "Do not put a single comma anywhere in it.",
        lambda k: "Commas are not allowed in your reply.",
        lambda k: "Write without any commas.",
    ]),
}

# At most one type of each group in a prompt.
GROUPS = {
    "case": {"change_case:english_capital", "change_case:english_lowercase", "change_case:capital_word_frequency"},
    "layout": {"length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word",
               "detectable_format:multiple_sections", "detectable_format:json_format",
               "detectable_format:number_bullet_lists"},
    "length": {"length_constraints:number_words", "length_constraints:number_sentences"},
    "keyword": {"keywords:existence", "keywords:frequency", "keywords:forbidden_words"},
}
# Pairs that cannot hold together.
CLASHES = {
    "language:response_language": GROUPS["case"] | GROUPS["keyword"] | {"startend:end_checker", "combination:repeat_prompt"},
    "detectable_format:json_format": {"detectable_format:number_highlighted_sections", "startend:end_checker",
                                      "combination:repeat_prompt", "detectable_content:number_placeholders"},
}


def compatible(ids):
    for group in GROUPS.values():
        if len(group & set(ids)) > 1:
            return False
    for a in ids:
        for b in ids:
            if b in CLASHES.get(a, ()) or a in CLASHES.get(b, ()):
                return False
    return True


def words_of(text):
    return re.findall(r"\w+", text.lower())


def ngrams(text, n=8):
    w = words_of(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def draw(rng, base_tasks, seen):
    """One prompt: a base task and 1-3 compatible constraints."""
    kind, task = choice(rng, base_tasks)
    if kind == "question":
        count = 1
        ids = ["detectable_format:constrained_response"] if rng.random() < 0.5 else [choice(rng, seen)]
    else:
        count = rng.choices([1, 2, 3], weights=[55, 35, 10])[0]
        pool = [t for t in seen if t != "detectable_format:constrained_response"]
        while True:
            ids = rng.sample(pool, count)
            if compatible(ids):
                break
    kwargs, sentences = [], []
    for i in ids:
        sampler, phrasings = TYPES[i]
        k = sampler(rng, task)
        kwargs.append(k)
        sentences.append(choice(rng, phrasings)(k))
    # repeat_prompt asks to repeat the request, which is the base task alone.
    return task + " " + " ".join(sentences), ids, kwargs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ifeval", required=True, help="IFEval's prompts (JSONL), for the overlap check")
    ap.add_argument("--count", type=int, default=2600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--output", required=True)
    ap.add_argument("--stats", required=True)
    args = ap.parse_args()

    assert len(TYPES) + len(HELD_OUT) == 25 and not set(TYPES) & set(HELD_OUT)
    seen = sorted(TYPES)
    ifeval_grams = set()
    with open(args.ifeval) as f:
        for line in f:
            if line.strip():
                ifeval_grams |= ngrams(json.loads(line)["prompt"])
    base_tasks = [(kind, p.format(t=topic)) for topic in TOPICS for kind, ps in KINDS.items() for p in ps]
    rng = random.Random(args.seed)
    out, prompts, overlapping, duplicates = [], set(), 0, 0
    while len(out) < args.count:
        prompt, ids, kwargs = draw(rng, base_tasks, seen)
        if ngrams(prompt) & ifeval_grams:
            overlapping += 1
            continue
        if prompt in prompts:
            duplicates += 1
            continue
        prompts.add(prompt)
        out.append({"key": f"pc-{len(out):05d}", "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs})
    by_type, by_count = {}, {}
    for r in out:
        by_count[len(r["instruction_id_list"])] = by_count.get(len(r["instruction_id_list"]), 0) + 1
        for i in r["instruction_id_list"]:
            by_type[i] = by_type.get(i, 0) + 1
    stats = {
        "prompts": len(out),
        "seed": args.seed,
        "base_tasks": len(base_tasks),
        "topics": len(TOPICS),
        "kinds": len(KINDS),
        "phrasings_per_type": {t: len(p) for t, (_, p) in TYPES.items()},
        "held_out_types": HELD_OUT,
        "draws_sharing_8_words_with_ifeval": overlapping,
        "prompts_sharing_8_words_with_ifeval": sum(1 for r in out if ngrams(r["prompt"]) & ifeval_grams),
        "duplicate_draws": duplicates,
        "constraints_per_prompt": by_count,
        "prompts_per_type": dict(sorted(by_type.items())),
    }
    # The stats first: a stop between the two leaves no prompts, so a rerun writes both.
    with open(args.stats + ".tmp", "w") as f:
        json.dump(stats, f, indent=1)
    os.replace(args.stats + ".tmp", args.stats)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        for r in out:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, args.output)

    print(f"{len(out)} prompts ({overlapping} draws shared 8 words with IFEval and were drawn again)", file=sys.stderr)


if __name__ == "__main__":
    main()
