"""The 15 PERSUADE prompts of the demo data: names, task types, assignments and topic vocabulary.

`PROMPTS` lists them in the brief's order; `TRAIN_PROMPTS` are the 7 that train essays answer and
`OTHER_PROMPTS` the 5 that other-origin train essays and test essays answer. Each prompt's topic terms are
what makes text clustering recover the prompt (common.tools.demo_essays writes essays from them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """One PERSUADE prompt: its name, task type, assignment text, source text and topic vocabulary."""

    name: str
    task: str
    assignment: str
    source_text: str
    topic_terms: tuple[str, ...]


def _terms(text: str) -> tuple[str, ...]:
    """Words and phrases written as one "; "-separated string."""
    return tuple(text.split("; "))


def _text_dependent(name: str, title: str, assignment: str, terms: str) -> Prompt:
    source = (
        f'"{title}" is a short informational article that students read before writing about {name.lower()}.'
    )
    return Prompt(name, "Text dependent", assignment, source, _terms(terms))


def _independent(name: str, assignment: str, terms: str) -> Prompt:
    return Prompt(name, "Independent", assignment, "", _terms(terms))


PROMPTS: tuple[Prompt, ...] = (
    _text_dependent(
        "Car-free cities",
        "In German Suburb, Life Goes On Without Cars",
        "Write an explanatory essay to inform fellow citizens about the advantages of limiting car usage.",
        "car-free cities; Vauban; Germany; Paris; smog; Bogota; car-free day; greenhouse gas emissions; "
        "pollution; public transportation; suburbs; car ownership; limiting car usage; bicycles; buses; "
        "traffic congestion; Elisabeth Rosenthal; driving ban; parking spaces; carbon emissions; walking; "
        "streetcars; commuters; cleaner air; fewer cars; urban planning; sidewalks; city streets; "
        "motor vehicles; Heidrun Walter; odd-even rule; fines; parks and sports centers",
    ),
    _text_dependent(
        "Does the electoral college work?",
        "What Is the Electoral College?",
        "Write a letter to your state senator arguing in favor of keeping the Electoral College or "
        "changing to election by popular vote.",
        "Electoral College; popular vote; electors; presidential election; swing states; Founding Fathers; "
        "Constitution; candidates; Richard Posner; Bradford Plumer; winner-take-all; the President; voters; "
        "Congress; Democrats; Republicans; Al Gore; Nixon; Bob Dole; state legislatures; ballot; big states; "
        "runoff elections; a tie; 538 electors; majority; campaign; Florida; Ohio; regional appeal; "
        "certainty of outcome; senators; disaster factor; democracy",
    ),
    _text_dependent(
        "Exploring Venus",
        "The Challenge of Exploring Venus",
        "Write an essay evaluating how well the author supports the idea that studying Venus is a worthy "
        "pursuit despite the dangers it presents.",
        "Venus; the planet; the surface; atmosphere; NASA; spacecraft; temperature; carbon dioxide; "
        "sulfuric acid; clouds; Evening Star; Earth's twin; volcanoes; mountains; valleys; pressure; "
        "800 degrees; blimp-like vehicle; solar system; orbit; mechanical computers; scientists; "
        "human exploration; probes; landing; thick atmosphere; hostile conditions; sunlight; rocky surface; "
        "electronics; astronomers; silicon carbide; planetary visits",
    ),
    _text_dependent(
        "The Face on Mars",
        "Unmasking the Face on Mars",
        "Write an argumentative essay, as a NASA scientist, convincing someone that the Face on Mars is a "
        "natural landform.",
        "the Face; Mars; landform; aliens; Viking 1; mesa; Cydonia; Mars Global Surveyor; butte; "
        "photograph; natural landform; shadows; Jim Garvin; Michael Malin; camera; resolution; pixels; "
        "Egyptian pyramid; Idaho; Snake River Plain; ancient civilization; conspiracy theorists; Orbiter; "
        "lava dome; pop icon; tabloids; alien artifact; red planet; Martian; 1976; 1998; 2001",
    ),
    _text_dependent(
        "Facial action coding system",
        "Making Mona Lisa Smile",
        "Write an essay arguing whether the use of the Facial Action Coding System to read the emotional "
        "expressions of students in a classroom is valuable.",
        "Facial Action Coding System; FACS; emotions; the computer; classroom; Mona Lisa; facial muscles; "
        "expressions; Dr. Huang; software; smile; bored; confused; 3-D computer model; Paul Eckman; "
        "happy; sad; angry; surprised; video; lesson; privacy; digital; muscles; Leonardo da Vinci; "
        "human emotions; detecting; webcam; feelings; Thomas Huang; face",
    ),
    _text_dependent(
        "A Cowboy Who Rode the Waves",
        "A Cowboy Who Rode the Waves",
        "Write an essay from the point of view of Luke convincing others to participate in the Seagoing "
        "Cowboys program.",
        "Seagoing Cowboys; Luke Bomberger; cowboy; ship; horses; cattle; Europe; World War II; UNRRA; "
        "Atlantic Ocean; China; Greece; Italy; Crete; Venice; adventure; mules; Don Reist; animals; hay; "
        "oats; the sea; voyage; the waves; stalls; volleyball; table-tennis; Navy; trips; Acropolis; "
        "seasick; helping people; New Orleans",
    ),
    _text_dependent(
        "Driverless cars",
        "Driverless Cars Are Coming",
        "Write an argumentative essay taking a position for or against the development of driverless cars.",
        "driverless cars; self-driving; Google; autonomous vehicles; sensors; the driver; safety; BMW; "
        "Tesla; liability; manufacturers; cameras; Sebastian Thrun; insurance; highway; lidar; Volvo; "
        "Traffic Jam Assistant; human drivers; crash; automobile; fully autonomous; smart roads; "
        "vibrating seats; heads-up display; car companies; robots; take over; computer chips; "
        "Google car; test drives; engineers",
    ),
    _independent(
        "Phones and driving",
        "Write an essay arguing whether drivers should or should not be able to use cell phones in any "
        "capacity while operating a vehicle.",
        "texting; driving; distracted driving; car crashes; teenagers; hands-free; text message; the road; "
        "cell phone; law; ticket; police; seatbelt; navigation; fatalities; Bluetooth; speakers; "
        "intersection; reckless; notifications; Do Not Disturb; license; traffic lights; passengers; "
        "phone calls; pull over; eyes on the road; behind the wheel; teen drivers; dashboard",
    ),
    _independent(
        "Summer projects",
        "Write an essay arguing whether summer projects should be teacher-designed or student-designed.",
        "summer projects; teacher-designed projects; student-designed projects; summer break; vacation; "
        "creativity; research; interests; independence; deadlines; guidelines; hobbies; summer camp; "
        "summer reading; the fall; brain drain; grading rubric; science experiment; poster; free time; "
        "the pool; beach; family trips; procrastinate; curriculum; topic choice; self-directed; June; "
        "August; summer slide",
    ),
    _independent(
        "Community service",
        "Write a letter to your principal arguing whether students should be required to perform "
        "community service.",
        "community service; volunteering; volunteers; neighborhood; homeless shelter; food bank; "
        "picking up trash; helping others; required hours; nonprofit; charity; elderly; nursing home; "
        "soup kitchen; park cleanup; mandatory service; citizens; donations; animal shelter; food drive; "
        "Habitat for Humanity; giving back; college applications; service hours; the community; kindness; "
        "young people; local",
    ),
    _independent(
        "Mandatory extracurricular activities",
        "Write an essay arguing for or against the principal's decision that every student must "
        "participate in at least one extracurricular activity.",
        "extracurricular activities; mandatory; clubs; yearbook; student council; basketball; soccer; band; "
        "choir; drama club; after school; debate team; robotics; chess club; at least one activity; "
        "teamwork; friendships; practice; tryouts; homework time; participation; art club; swim team; "
        "leadership; school spirit; part-time job; exhausted; new skills",
    ),
    _independent(
        "Cell phones at school",
        "Write a letter to your principal about which cell phone policy, allowing phones during free time "
        "or banning them at school, is better.",
        "cell phones; school policy; lunch; class time; Policy 1; Policy 2; texting in class; confiscate; "
        "emergencies; parents; distraction; lockers; social media; ban; rules; detention; calculators; "
        "cheating; breaks; hallways; ringing; smartphones; turned off; contact; hall pass; phone use",
    ),
    _independent(
        "Grades for extracurricular activities",
        "Write a letter to your principal about a policy requiring at least a grade B average to "
        "participate in sports or other activities.",
        "grade B average; C average; GPA; report card; eligibility; failing grades; athletes; "
        "academic performance; honor roll; study hall; tutors; math class; quarterly grades; "
        "academic probation; sports teams; games; the bench; low grades; exams; transcript; scholarships; "
        "algebra; improving grades; student athletes; policy change; averages; the season; quizzes",
    ),
    _independent(
        "Distance learning",
        "Write an essay arguing whether students would benefit from being able to attend classes from "
        "home by way of online or video conferencing.",
        "distance learning; online classes; from home; video conferencing; internet; attend classes; "
        "face-to-face; classmates; Zoom; homeschool; self-paced; online school; wifi; laptop; bullying; "
        "anxiety; sick; commute; social skills; isolation; e-mail; virtual; lectures; flexible schedule; "
        "pajamas; discipline; loneliness; technology problems; interaction",
    ),
    _independent(
        "Seeking multiple opinions",
        "Explain why seeking multiple opinions can help someone make a better choice.",
        "advice; multiple opinions; more than one person; perspectives; decision; better choice; friends; "
        "experience; viewpoints; different people; counselor; trust; mistakes; asking for help; wise; "
        "opinions; siblings; compare; options; biased; mentor; suggestions; pros and cons; consult; "
        "outcome; best decision; judgement; grandparents; coworkers",
    ),
)
"""The 15 PERSUADE prompts in the order the brief names them; train answers PROMPTS[:7]."""

TRAIN_PROMPTS: tuple[str, ...] = tuple(p.name for p in PROMPTS[:7])
OTHER_PROMPTS: tuple[str, ...] = (
    "Driverless cars",
    "Facial action coding system",
    "Exploring Venus",
    "The Face on Mars",
    "A Cowboy Who Rode the Waves",
)
"""The 5 prompts that other-origin train essays and test essays answer."""
_TRAIN_PROMPT_WEIGHTS = (0.18, 0.18, 0.13, 0.13, 0.13, 0.11, 0.14)
