"""Training-time plugins in the user's own loop.

    session = reid_explain.training.attach(model, losses=["ppim", "attention_constraint"])
    optimizer = torch.optim.AdamW([*model.parameters(), *session.parameters()])
    for batch in loader:
        img, txt = model.encode_image(batch["images"]), model.encode_text(tokens)
        loss = my_objective(img, txt) + reid_explain.training.auxiliary_losses(model, batch)
        ...
    session.detach()    # the host is as it was, plus what training changed in its weights
"""

from .session import TrainingSession, attach, auxiliary_losses

__all__ = ["TrainingSession", "attach", "auxiliary_losses"]
