"""`latentdlm app`: the Gradio page served on 127.0.0.1 and driven over real HTTP through gradio_client,
one tiny model of each kind (unconditional, class-conditional, text-conditioned), a bad input per tab."""

import socket
import time
from contextlib import contextmanager

import pytest
from helpers import labeled_csv, tiny_diffusion_overrides

from latentdlm.cli import main
from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from latentdlm.app import build_app, column_name  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
FABLE = "The fox saw some grapes. He could not reach them. He said they were sour."
CROW = "A crow held a piece of cheese. The fox praised her voice."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(folder):
    """The app on a trained pipeline, launched on a free local port; a gradio_client Client on it."""
    demo = build_app(LatentDiffusionTextPipeline.from_pretrained(folder), title="test")
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


def endpoints(client) -> dict:
    return client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def refused(call, message: str) -> str:
    """The page's message for a bad input: one line that says what is wrong, no stack trace."""
    with pytest.raises(AppError) as caught:
        call()
    text = str(caught.value)
    assert message in text and "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def unconditional(pipeline_dir):
    with served(pipeline_dir) as client:
        yield client


def test_the_unconditional_page_has_the_tabs_it_supports(unconditional):
    api = endpoints(unconditional)
    assert {"/generate", "/interpolate", "/show_point", "/vary", "/infill"} <= set(api)
    assert "/summarize" not in api  # no source-text condition: no summarize tab
    assert [p["label"] for p in api["/generate"]["parameters"]] == [
        "number of samples", "segments (0: drawn)", "steps", "sampler", "seed",
        "beams (1: greedy)", "no-repeat n-gram size (0: off)", "repetition penalty (1: off)", "top-p (0: no sampling)",
        "temperature (with top-p)"]


def test_generate_tab(unconditional):
    text = unconditional.predict(3, 2, 2, "ddim", 7, api_name="/generate")
    assert [line.split(".")[0] for line in text.split("\n\n")] == ["1", "2", "3"]
    assert text == unconditional.predict(3, 2, 2, "ddim", 7, api_name="/generate")  # the seed repeats
    refused(lambda: unconditional.predict(2, 0, 2, "euler", 0, api_name="/generate"), "euler is not in the list of choices")
    refused(lambda: unconditional.predict(2, 99, 2, "ddim", 0, api_name="/generate"), "Value 99 is greater than maximum value")
    # the decoder's settings (DecodingConfig): top-p sampling repeats with the seed, and a bad beam count is refused
    sampled = unconditional.predict(3, 2, 2, "ddim", 7, 1, 0, 1.0, 0.9, api_name="/generate")
    assert sampled.startswith("1. ") and sampled == unconditional.predict(3, 2, 2, "ddim", 7, 1, 0, 1.0, 0.9, api_name="/generate")
    refused(lambda: unconditional.predict(2, 0, 2, "ddim", 0, 0, 0, 1.0, 0.0, api_name="/generate"), "less than minimum value")


def test_the_sampling_progress_reaches_the_page(unconditional):
    job = unconditional.submit(8, 0, 200, "ddpm", 0, api_name="/generate")
    seen = set()
    while not job.done():
        seen |= {(p.desc, p.length) for p in job.status().progress_data or []}
        time.sleep(0.02)
    assert ("sampling", 200) in seen  # the pipeline's tqdm bar, step by step
    assert job.result().startswith("1. ")


def test_interpolate_tab_walks_the_path_and_draws_it(unconditional):
    listing, point, latent_map, position = unconditional.predict(FABLE, CROW, 5, "slerp", api_name="/interpolate")
    assert (position["value"], position["maximum"]) == (0, 4)  # the slider goes back to text A, over this path's 5 points
    assert [line.split()[0] for line in listing.splitlines()] == ["t=0.00", "t=0.25", "t=0.50", "t=0.75", "t=1.00"]
    assert point.startswith("t=0.00: ")
    with open(latent_map, "rb") as f:
        assert f.read(8) == PNG
    end, end_map = unconditional.predict(4, api_name="/show_point")  # the slider, on this session's path
    assert end.startswith("t=1.00: ") and " ".join(end[len("t=1.00: "):].split()) == listing.splitlines()[-1].split("  ", 1)[1]
    assert end_map != latent_map
    refused(lambda: unconditional.predict("", CROW, 5, "slerp", api_name="/interpolate"), "Text A is empty")


def test_vary_tab(unconditional):
    text = unconditional.predict(FABLE, 0.4, 2, 2, 0, api_name="/vary")
    assert text.startswith("1. ") and "\n\n2. " in text
    refused(lambda: unconditional.predict("   ", 0.4, 2, 2, 0, api_name="/vary"), "The text is empty")


def test_infill_tab_keeps_the_known_sentences(unconditional):
    text = unconditional.predict("The fox saw some grapes. ___ He said they were sour.", 2, 0, api_name="/infill")
    assert text.startswith("The fox saw some grapes. ") and text.endswith(" He said they were sour.")
    refused(lambda: unconditional.predict("The fox saw some grapes.", 2, 0, api_name="/infill"), "nothing to fill")
    refused(lambda: unconditional.predict("", 2, 0, api_name="/infill"), "The text is empty")


def test_the_class_conditional_page_offers_its_classes_and_guidance(autoencoder, tmp_path):
    out = tmp_path / "classes"
    assert main(["train-diffusion", "--config", "configs/diffusion/tiny.yaml", *tiny_diffusion_overrides(autoencoder, out),
                 f"data.source={labeled_csv(tmp_path / 'labeled.csv')}", "data.column=content", "data.label_column=topic",
                 "data.limit=null"]) == 0
    with served(out / "pipeline") as client:
        api = endpoints(client)
        assert [p["label"] for p in api["/generate"]["parameters"]][5:8] == [  # after the fixed five, before the decoding panel
            "class", "guidance scale (1 = none)", "guidance method (cfg: classifier-free, apg: adaptive projected)"]
        assert "/summarize" not in api
        cfg = client.predict(2, 1, 2, "ddim", 0, "novel", 3.0, "cfg", api_name="/generate")
        assert cfg.startswith("1. ") and client.predict(2, 1, 2, "ddim", 0, "novel", 3.0, "apg", api_name="/generate").startswith("1. ")
        refused(lambda: client.predict(2, 1, 2, "ddim", 0, "poem", 3.0, "cfg", api_name="/generate"), "poem is not in the list of choices")
        refused(lambda: client.predict(2, 1, 2, "ddim", 0, "novel", 3.0, "pag", api_name="/generate"), "pag is not in the list of choices")


def test_the_text_conditioned_page_summarizes(conditional_pipeline):
    with served(conditional_pipeline) as client:
        api = endpoints(client)
        assert "/summarize" in api and "source text (condition)" in [p["label"] for p in api["/generate"]["parameters"]]
        # trained title -> text: the tab's boxes say so (a Debian model's say "document" -> "summary")
        assert api["/summarize"]["parameters"][0]["label"] == "title"
        assert api["/summarize"]["returns"][0]["label"] == "text (what this model writes)"
        summary = client.predict("The Lion and the Mouse", 1, "cfg", 1, 2, 0, api_name="/summarize")
        assert isinstance(summary, str) and summary.strip()
        refused(lambda: client.predict(" ", 1, "cfg", 1, 2, 0, api_name="/summarize"), "The document is empty")
        refused(lambda: client.predict(1, 0, 2, "ddim", 0, "", 2.0, "cfg", api_name="/generate"), "guidance needs a source text to guide towards")
        assert client.predict(1, 0, 2, "ddim", 0, "The Lion and the Mouse", 2.0, "apg", api_name="/generate").startswith("1. ")


def test_the_app_command_refuses_a_busy_port_and_a_folder_that_is_no_pipeline(pipeline_dir, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["app", "--model", str(pipeline_dir), "--port", str(port)]) == 2
        assert f"port {port} on 127.0.0.1 is in use: choose another with --port" in capsys.readouterr().err
    assert main(["app", "--model", str(tmp_path), "--port", str(free_port())]) == 2
    assert "is not a latentdlm pipeline folder" in capsys.readouterr().err


def test_the_summarize_tab_names_what_the_model_reads_and_writes():
    assert [column_name(c, "text") for c in ("summary", "trg", None, " Synopsis_Line ")] == ["summary", "text", "text", "synopsis line"]


def test_a_full_queue_refuses_at_once_with_try_again(pipeline_dir):
    """Beyond the queue's bound a request is refused at once ("Queue is full ... try again"), the queued ones still
    answer: the app under more users than it serves."""
    from gradio_client.utils import QueueError

    demo = build_app(LatentDiffusionTextPipeline.from_pretrained(pipeline_dir), title="test")
    port = free_port()
    demo.queue(default_concurrency_limit=1, max_size=1)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        jobs = [client.submit(8, 0, 200, "ddim", seed, api_name="/generate") for seed in range(6)]
        answers, busy = [], []
        for job in jobs:
            try:
                answers.append(job.result(timeout=300))
            except QueueError as exc:
                busy.append(str(exc))
        assert busy and all("try again" in message for message in busy)
        assert answers and all(answer.startswith("1. ") for answer in answers)
    finally:
        demo.close()


def test_waiting_generate_requests_run_as_one_sampler_call(pipeline_dir, monkeypatch):
    """--max-batch: requests waiting together run as one sampler call, each with its own seed's samples; a request
    alone, or one whose settings differ, runs on its own."""
    sizes = []
    call = LatentDiffusionTextPipeline.__call__
    monkeypatch.setattr(LatentDiffusionTextPipeline, "__call__", lambda self, **kw: sizes.append(kw["num_samples"]) or call(self, **kw))
    demo = build_app(LatentDiffusionTextPipeline.from_pretrained(pipeline_dir), title="test", max_batch=4)
    port = free_port()
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        busy = client.submit(8, 2, 200, "ddpm", 0, api_name="/generate")  # holds the one worker while the others queue
        while not busy.status().code.name == "PROCESSING":
            time.sleep(0.01)
        jobs = [client.submit(count, 2, 3, "ddim", seed, api_name="/generate") for count, seed in ((1, 1), (2, 2), (3, 3))]
        answers = [job.result(timeout=300) for job in jobs]
        assert busy.result(timeout=300).startswith("1. ")
    finally:
        demo.close()
    assert [len(a.split("\n\n")) for a in answers] == [1, 2, 3]
    assert sizes == [8, 6]  # the three waiting requests: one call of 1 + 2 + 3 samples


def test_a_batch_of_requests_answers_each_as_alone_and_keeps_a_bad_one_apart(pipeline_dir):
    from latentdlm.app import Capabilities, Handlers

    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    h = Handlers(pipe, Capabilities.of(pipe))
    request = lambda count, seed, steps=3: dict(num_samples=count, num_segments=2, steps=steps, sampler="ddim", seed=seed,  # noqa: E731
                                                class_label=None, condition=None, guidance=1.0, guidance_method="cfg")
    batch = [request(2, 5), request(1, 6), request(1, 7, steps=10**6)]
    answers = h.generate_batch(batch)
    alone = [h.generate_together([r])[0] for r in batch[:2]]
    assert answers[:2] == alone  # greedy decoding at one segment width: what each gets alone
    assert answers[2].startswith("error: the number of inference steps must be at most")
    with pytest.raises(Exception, match="number of inference steps"):
        h.generate_batch(batch[2:])
