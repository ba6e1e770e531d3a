"""Build the local ``hired_easyvqa`` lmms-eval task from the easy-vqa package's pictures and questions."""

from __future__ import annotations

import shutil
from pathlib import Path

TASK_DIR = Path(__file__).parent / "task"
TASK_NAME = "hired_easyvqa"

# (height, width) the 64x64 pictures are resized to, in turn: LLaVA-NeXT picks a different grid for each
SIZES = [(64, 64), (84, 168), (168, 84), (168, 168), (84, 252)]


def build_task(dest: str | Path, num_docs: int = 10) -> Path:
    """Write the task (YAML, its Python helpers and a parquet file of ``num_docs`` questions) to ``dest``.

    Returns ``dest``, to pass as lmms-eval's ``--include_path``.
    """
    import datasets
    from easy_vqa import get_test_image_paths, get_test_questions
    from PIL import Image

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    questions, answers, image_ids = get_test_questions()
    paths = get_test_image_paths()
    if num_docs > len(questions):
        raise ValueError(f"easy-vqa has {len(questions)} test questions, asked for {num_docs}")
    rows = {"question_id": [], "question": [], "answer": [], "image": []}
    for i in range(num_docs):
        h, w = SIZES[i % len(SIZES)]
        image = Image.open(paths[image_ids[i]]).convert("RGB").resize((w, h), Image.Resampling.NEAREST)
        rows["question_id"].append(i)
        rows["question"].append(questions[i])
        rows["answer"].append(answers[i])
        rows["image"].append(image)
    features = datasets.Features(
        {
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "image": datasets.Image(),
        }
    )
    data_file = dest / f"{TASK_NAME}.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(data_file))
    template = (TASK_DIR / f"{TASK_NAME}.yaml.tmpl").read_text()
    (dest / f"{TASK_NAME}.yaml").write_text(template.replace("@DATA_FILE@", str(data_file.resolve())))
    shutil.copy(TASK_DIR / f"{TASK_NAME}_utils.py", dest / f"{TASK_NAME}_utils.py")
    return dest
