r"""The Tülu 3 evaluation prompts for GSM8K (8-shot CoT), MATH (4-shot Minerva) and IFEval (0-shot).

Each prompt is ONE user turn with the few-shot examples inside it, rendered through the project's chat template
(:func:`megatron_tulu.data.chat.render`, Tülu template) with the generation prompt (``<|assistant|>\n``) at the end.

Sources of the exemplars (kept verbatim apart from the one note below):

- GSM8K: the 8 chain-of-thought exemplars of Wei et al. 2022, "Chain-of-Thought Prompting Elicits Reasoning in
  Large Language Models", Table 20 (arXiv:2201.11903), in the form open-instruct's ``eval/gsm/examplars.py`` and
  OLMES' ``STD:GSM8k`` few-shot source use for Tülu 3 (each answer ends "So the answer is N."). Layout as OLMES'
  GSM8K task: ``Question: {q}\nAnswer: {cot}`` blocks separated by a blank line, the test question last, ending
  ``Answer:``.
- MATH: the 4 exemplars of the Minerva prompt (Lewkowycz et al. 2022, "Solving Quantitative Reasoning Problems
  with Language Models", arXiv:2206.14858, Appendix D.2), as lm-evaluation-harness' ``minerva_math`` task and
  OLMES' ``Minerva:MATH`` source carry them (including the stray ``}`` after the first problem, which is in the
  original prompt). Note: lm-evaluation-harness's Python string loses one backslash of the LaTeX row break in
  the third and fourth examples (``480\`` + newline); here it is the ``\\`` of the paper. Layout as the Minerva
  task: ``Problem:\n{problem}\n\nSolution: {solution}`` blocks separated by a blank line, ending ``Solution:``.
- IFEval: 0-shot, the row's ``prompt`` as is (Zhou et al. 2023, google/IFEval).

OLMES' ``minerva_math::tulu`` config puts the 4 shots in separate user/assistant turns
(``fewshot_as_multiturn=True``); this module puts every shot inside the one user message for all tasks, so
MATH numbers can differ slightly from OLMES' for models sensitive to that layout.
"""

from __future__ import annotations

GSM8K_EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
         "are done, there will be 21 trees. How many trees did the grove workers plant today?"),
        ("There are 15 trees originally. Then there were 21 trees after some more were planted. So there "
         "must have been 21 - 15 = 6. So the answer is 6."),
    ),
    (
        ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking "
         "lot?"),
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.",
    ),
    (
        ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left "
         "in total?"),
        ("Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After "
         "eating 35, they had 74 - 35 = 39. So the answer is 39."),
    ),
    (
        ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
         "lollipops did Jason give to Denny?"),
        ("Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 "
         "- 12 = 8. So the answer is 8."),
    ),
    (
        ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys "
         "does he have now?"),
        ("Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys."
         " 5 + 4 = 9. So the answer is 9."),
    ),
    (
        ("There were nine computers in the server room. Five more computers were installed each day, from "
         "monday to thursday. How many computers are now in the server room?"),
        ("There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = "
         "20 computers were added. 9 + 20 is 29. So the answer is 29."),
    ),
    (
        ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How "
         "many golf balls did he have at the end of wednesday?"),
        ("Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After "
         "losing 2 more, he had 35 - 2 = 33 golf balls. So the answer is 33."),
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        ("Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - "
         "15 dollars left. 23 - 15 is 8. So the answer is 8."),
    ),
)
"""(question, chain-of-thought answer) pairs: Wei et al. 2022, Table 20 (see the module docstring)."""

MATH_EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        r"Find the domain of the expression  $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.}",
        (r"The expressions inside each square root must be non-negative. Therefore, $x-2 \ge 0$, so "
         r"$x\ge2$, and $5 - x \ge 0$, so $x \le 5$. Also, the denominator cannot be equal to zero, so "
         r"$5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\boxed{[2,5)}$." "\n"
         "Final Answer: The final answer is $[2,5)$. I hope it is correct."),
    ),
    (
        r"If $\det \mathbf{A} = 2$ and $\det \mathbf{B} = 12,$ then find $\det (\mathbf{A} \mathbf{B}).$",
        (r"We have that $\det (\mathbf{A} \mathbf{B}) = (\det \mathbf{A})(\det \mathbf{B}) = (2)(12) = "
         r"\boxed{24}.$" "\n"
         "Final Answer: The final answer is $24$. I hope it is correct."),
    ),
    (
        ("Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, "
         "how many times must Terrell lift them in order to lift the same total weight?"),
        (r"If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\cdot 12\cdot20=480$ "
         "pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total "
         r"of $2\cdot15\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:" "\n"
         "\\begin{align*}\n"
         "30n&=480\\\\\n"
         "\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n"
         "\\end{align*}\n"
         "Final Answer: The final answer is $16$. I hope it is correct."),
    ),
    (
        ("If the system of equations\n"
         "\n"
         "\\begin{align*}\n"
         "6x-4y&=a,\\\\\n"
         "6y-9x &=b.\n"
         "\\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\n"
         "find $\\frac{a}{b},$ assuming $b$ is nonzero."),
        ("If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n"
         "\n"
         "$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n"
         "\n"
         "$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
         "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct."),
    ),
)
"""(problem, solution) pairs of the Minerva MATH prompt (see the module docstring)."""


def gsm8k_user_message(question: str, shots: int = len(GSM8K_EXEMPLARS)) -> str:
    """The 8-shot chain-of-thought GSM8K user message for ``question``."""
    blocks = [f"Question: {q}\nAnswer: {a}" for q, a in GSM8K_EXEMPLARS[:shots]]
    blocks.append(f"Question: {question}\nAnswer:")
    return "\n\n".join(blocks)


def math_user_message(problem: str, shots: int = len(MATH_EXEMPLARS)) -> str:
    """The 4-shot Minerva MATH user message for ``problem``."""
    blocks = [f"Problem:\n{p}\n\nSolution: {s}" for p, s in MATH_EXEMPLARS[:shots]]
    blocks.append(f"Problem:\n{problem}\n\nSolution:")
    return "\n\n".join(blocks)


def ifeval_user_message(prompt: str) -> str:
    """IFEval is 0-shot: the prompt as is."""
    return prompt


USER_MESSAGE = {"gsm8k": gsm8k_user_message, "math": math_user_message, "ifeval": ifeval_user_message}
"""verifier dataset name -> builder of the user message from the row's question/problem/prompt text."""


def eval_messages(dataset: str, text: str) -> list[dict]:
    """The chat for one example: a single user turn holding the shots and the question."""
    return [{"role": "user", "content": USER_MESSAGE[dataset](text)}]
