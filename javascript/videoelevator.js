// VideoElevator on the txt2img page: hover hints for its controls, and the host's Batch size shown as
// taken over by Frames while VideoElevator is ticked. Loaded by the WebUI like every extension's
// javascript/ (AUTOMATIC1111 and Forge); does nothing on a page without the VideoElevator accordion.

(function() {
    "use strict";

    // Hover hints in the host's convention (the element's title, as the WebUI sets for its own
    // controls): what the control does, and when to change it. One per control of the accordion,
    // keyed by the name in its elem_id, videoelevator_<name>.
    const HINTS = {
        enable: "Turn a txt2img job into a video: the checkpoint draws every frame, a text-to-video model refines the motion.",
        t2v_model: "The text-to-video model that refines motion. Put models in models/VideoElevator; press the refresh button after adding one.",
        frames: "Frames of the video: they replace Batch size. Batch count makes several videos.",
        preset: "Fills the advanced settings for a kind of T2V model; pick the one named after yours.",
        refine_points: "When the T2V model refines motion, as noise levels ('10%,30%') or steps remaining. Fewer points = faster, less motion.",
        t2v_steps: "Denoising steps the T2V model takes at each refine point. More = stronger motion, slower.",
        t2v_guidance: "How closely the T2V model follows the prompt (its CFG scale). Lower it for AnimateLCM.",
        noise_mix: "How much initial noise all frames share: higher = steadier frames, lower = more change between frames.",
        filter_method: "Shape of the low-pass filter over time that removes flicker before each refine.",
        filter_spatial: "Spatial cut-off of that filter: lower keeps less fine detail in the motion.",
        filter_temporal: "Temporal cut-off: lower = smoother motion and less flicker, higher = more motion detail.",
        anchor: "The frame(s) every frame looks at for its appearance: the first, or the first and the previous one.",
        inversion_steps: "Steps back to the sampler's noise level after a refine; 0 = every step (best). Lower it to save time.",
        pnp: "Correct the sampler after each refine with the inversion's path (one more UNet call per step). Leave on.",
        t2v_prompt: "A different prompt for the T2V model, e.g. describing the motion. Empty = the main prompt.",
        t2v_negative_prompt: "A different negative prompt for the T2V model. Empty = the main negative prompt.",
        fps: "Frames per second of the written video.",
        formats: "Files to write: MP4, GIF, WEBP, and PNG frames.",
        inversion_prompt: "Prompt for the inversion back to noise: empty (default) or the negative prompt as the authors' code.",
        compat: "'authors' reproduces the authors' implementation exactly; leave on 'none' otherwise.",
        t2v_fps: "The frame rate a VideoCrafter2 model is conditioned on: lower = slower motion. Others ignore it.",
        t2v_window: "Frames the T2V model sees at once; longer videos are refined in overlapping windows. 0 = the model's own length.",
        t2v_overlap: "Frames shared by neighbouring T2V windows. More = smoother joins, more T2V work.",
        frame_chunk: "Frames per image-model call: lower it if long videos run out of GPU memory. 0 = automatic.",
    };
    const BATCH_REASON = "Set by VideoElevator: the batch is the video's frames (VideoElevator > Frames). " +
        "Untick VideoElevator to change it.";
    const TAKEN = "videoelevatorTaken"; // dataset flag on the Batch size inputs while we hold them

    function accordion() {
        return gradioApp().getElementById("videoelevator");
    }

    function enabled() {
        const box = gradioApp().querySelector("#videoelevator-checkbox input");
        return Boolean(box && box.checked);
    }

    // Batch size: disabled with the reason while VideoElevator is on; put back as it was when it is off.
    function holdBatchSize(on) {
        const block = gradioApp().getElementById("txt2img_batch_size");
        if (!block) return;
        for (const element of [block, ...block.querySelectorAll("input")]) {
            const isInput = element.tagName === "INPUT";
            if (on && !element.dataset[TAKEN]) {
                element.dataset[TAKEN] = JSON.stringify({disabled: isInput && element.disabled, title: element.title});
                if (isInput) element.disabled = true;
                element.title = BATCH_REASON;
            } else if (!on && element.dataset[TAKEN]) {
                const before = JSON.parse(element.dataset[TAKEN]);
                if (isInput) element.disabled = before.disabled;
                element.title = before.title;
                delete element.dataset[TAKEN];
            }
        }
        block.classList.toggle("videoelevator-taken", on);
    }

    function addHints() {
        for (const [name, hint] of Object.entries(HINTS)) {
            const element = name === "enable" ?
                gradioApp().querySelector("#videoelevator > .label-wrap") :
                gradioApp().getElementById("videoelevator_" + name);
            if (element && element.title !== hint) element.title = hint;
        }
    }

    function sync() {
        if (!accordion()) return; // not the txt2img page, or the extension is off
        addHints();
        holdBatchSize(enabled());
    }

    onUiLoaded(function() {
        if (!accordion()) return;
        const boxes = gradioApp().querySelectorAll("#videoelevator-checkbox input, #videoelevator-visible-checkbox");
        for (const box of boxes) {
            box.addEventListener("input", () => setTimeout(sync, 0));
            box.addEventListener("change", () => setTimeout(sync, 0));
        }
        sync();
    });
    // a pasted infotext or a ui-config default can tick the box without an event: check on page updates
    onUiUpdate(sync);
})();
