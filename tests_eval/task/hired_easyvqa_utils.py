"""Prompt, pictures and scoring of the local ``hired_easyvqa`` lmms-eval task."""


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return f"{doc['question']}\nAnswer the question using a single word."


def process_results(doc, results):
    answer = results[0].strip().lower().rstrip(".")
    return {"exact_match": float(answer == doc["answer"].lower())}
