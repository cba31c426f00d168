"""Evaluation: batched mixed-task generation and restricted-choice scoring -> label normalisation -> metrics.

``evaluate_tasks`` is the entry point; the modules below it each do one step and can be used alone.
"""

from peft_continual.evaluation.calibration import calibrate_choice, content_free_log_prior
from peft_continual.evaluation.during_training import ValidationAccuracy
from peft_continual.evaluation.generate import generate_answers, generate_token_ids
from peft_continual.evaluation.labels import LabelNormalization
from peft_continual.evaluation.metrics import classification_metrics, intent_slot_metrics
from peft_continual.evaluation.model_inputs import model_inputs
from peft_continual.evaluation.report import TaskResult, evaluate_task, evaluate_tasks
from peft_continual.evaluation.restricted import CandidateSet, RestrictedChoice, score_candidates
from peft_continual.evaluation.slots import IntentSlots, parse_intent_and_slots
from peft_continual.evaluation.tasks import TaskEvaluation, TaskKind

__all__ = [
    "CandidateSet",
    "IntentSlots",
    "LabelNormalization",
    "RestrictedChoice",
    "TaskEvaluation",
    "TaskKind",
    "TaskResult",
    "ValidationAccuracy",
    "calibrate_choice",
    "classification_metrics",
    "content_free_log_prior",
    "evaluate_task",
    "evaluate_tasks",
    "generate_answers",
    "generate_token_ids",
    "intent_slot_metrics",
    "model_inputs",
    "parse_intent_and_slots",
    "score_candidates",
]
