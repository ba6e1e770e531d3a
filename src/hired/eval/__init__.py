"""Accuracy evaluation: the lmms-eval model ``hired_llava`` (:mod:`hired.eval.lmms`, needs ``hired-vlm[eval]``)
and ``hired report`` (:mod:`hired.eval.report`, lmms-eval result folders → a Markdown table).

Nothing is imported here: the submodules load torch, transformers or lmms-eval only when used.
"""
