"""Batch encoding: cached per-example encodings give exactly the processor's own batch."""

from __future__ import annotations

from dataclasses import replace

import torch

from dpbench.models.base import load_image


def processor_batch_rows(model, examples):
    """What the processor makes of the batch in one call: prompt ids per row, and pixels."""
    images = [load_image(e.image) for e in examples]
    texts = [model.prompt_text(e) for e in examples]
    ids = model.processor(text=texts, images=images, return_tensors=None, padding=False)["input_ids"]
    return [list(r) for r in ids], model.processor.image_processor(images, return_tensors="pt")["pixel_values"]


def test_encoding_equals_the_processors_batch_before_and_after_caching(tiny_model, digit_examples):
    examples = digit_examples[:5]
    ids, pixels = processor_batch_rows(tiny_model, examples)
    targets = [e.target for e in examples]
    for _ in range(2):  # the second encode reads every example from the caches
        batch = tiny_model.encode(examples, targets)
        torch.testing.assert_close(batch["pixel_values"], pixels, rtol=0, atol=0)
        for row, mask, labels, expected, target in zip(
            batch["input_ids"], batch["attention_mask"], batch["labels"], ids, targets
        ):
            real = row[mask.bool()].tolist()
            target_ids = tiny_model.tokenizer(target, add_special_tokens=False)["input_ids"]
            assert real == expected + target_ids
            assert labels[mask.bool()].tolist() == [-100] * len(expected) + target_ids


def test_a_changed_prompt_or_image_is_encoded_anew(tiny_model, digit_examples):
    a, b = digit_examples[0], digit_examples[1]
    tiny_model.encode([a])
    changed = replace(a, prompt="Is the number even?")
    assert tiny_model.encode([changed])["input_ids"].tolist() != tiny_model.encode([a])["input_ids"].tolist()
    other_image = replace(a, image=b.image)
    torch.testing.assert_close(tiny_model.encode([other_image])["pixel_values"], tiny_model.encode([b])["pixel_values"])
    assert not torch.equal(tiny_model.encode([other_image])["pixel_values"], tiny_model.encode([a])["pixel_values"])


def test_generation_targets_end_with_eos_and_choice_targets_do_not(tiny_model, digit_examples):
    """A generation task's answer is trained to its end-of-sequence token, or greedy decoding
    of a well-fitted model never stops; a multiple-choice letter is scored alone."""
    choice = digit_examples[0]
    answer = replace(choice, ends_with_eos=True)
    labels = tiny_model.encode([choice, answer], [choice.target, choice.target])["labels"]
    scored = [row[row != -100].tolist() for row in labels]
    eos = tiny_model.tokenizer.eos_token_id
    assert scored[1] == scored[0] + [eos] and eos not in scored[0]
