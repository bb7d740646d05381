"""Generate the example support dataset for tunecraft's demo (deterministic, stdlib only).

The data is customer-support chat for Quillfield Bank, a fictional retail bank. Every assistant
turn is one line of JSON in a house format the base model has never seen:

    {"intent": "card_declined", "priority": "high", "reply": "Your Zapflix payment was ..."}

`intent` comes from a closed set of 13 labels (accuracy / macro-F1), `priority` is fixed per
intent, and `reply` follows one house template per intent with a slot (card type, merchant,
amount, city) copied from the customer's message, so that exact match is achievable but not
free. User messages are built from many paraphrase templates, filler sentences, registers
(neutral, casual, formal, angry) and typos, so the label is clear to a reader yet not a keyword
lookup (several intents share words such as "declined", "failed", "locked out", "moving").

Run from the repository root:

    python examples/make_examples.py            # writes examples/support/
    python examples/make_examples.py --out DIR  # same bytes, elsewhere

The same seed always gives the same bytes; the unit test checks the committed files against a
fresh run, and the generator asserts there are no duplicates and no near-duplicate user
messages across splits.
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
COMPANY = "Quillfield"

# Examples per intent in each split: 13 intents -> train 429, val 65, test 117.
PER_INTENT = {"test": 9, "val": 5, "train": 33}
PC_PER_INTENT = 4  # prompt/completion variant: 52 rows taken from train
NEAR_DUP_RATIO = 0.9  # difflib ratio on normalized text at or above which two messages are "the same"


@dataclass(frozen=True)
class Intent:
    """One label: its priority, its house reply template, and the user-message templates."""

    name: str
    priority: str
    reply: str  # may use {card}, {merchant}, {amount}, {city}
    templates: tuple[str, ...]  # may use the reply's slot plus {when} (and {merchant} for context)


INTENTS: tuple[Intent, ...] = (
    Intent(
        "card_arrival",
        "normal",
        "Your new {card} ships within 5 working days; track it in Cards > Delivery.",
        (
            "I ordered a new {card} {when} and it still hasn't arrived.",
            "Where is my {card}? It's been over a week.",
            "My replacement {card} never showed up in the post.",
            "How long does a new {card} take to get here?",
            "still waiting on my {card}",
            "The {card} you sent me hasn't come yet. When should I expect it?",
            "I was told my {card} was dispatched {when} but there's nothing in my mailbox.",
            "Has my {card} been posted yet? I need it for a trip.",
            "When will the {card} I requested be delivered?",
            "My old card expires this month and the new {card} isn't here.",
            "Any update on the delivery of my {card}?",
            "I've checked the mail every day and no {card} so far.",
            "new {card} not received",
            "Is there a way to track the {card} you're sending me?",
            "I renewed my {card} {when}. How many days until it arrives?",
            "The app says my {card} was shipped but I don't have it.",
        ),
    ),
    Intent(
        "card_lost",
        "urgent",
        "Freeze your {card} now in Cards > Freeze; a free replacement ships today.",
        (
            "I lost my {card} {when}.",
            "Someone stole my wallet with my {card} in it.",
            "I can't find my {card} anywhere, I think I dropped it.",
            "My {card} was taken from my bag {when}. What do I do?",
            "left my {card} in a taxi",
            "Help, my {card} is missing and I'm worried someone will use it.",
            "I misplaced my {card}. Can you block it?",
            "My purse got stolen {when} and the {card} was inside.",
            "I think I left my {card} at a restaurant and now it's gone.",
            "lost {card}, need to stop it",
            "Our house was broken into {when} and my {card} is gone.",
            "I had my {card} in my jacket and now it's not there.",
            "How do I report a stolen {card}?",
            "My {card} fell out of my pocket on the bus.",
            "Got pickpocketed {when}. My {card} went with it.",
        ),
    ),
    Intent(
        "card_declined",
        "high",
        "Your {merchant} payment was declined; check your limits in Cards > Limits and retry.",
        (
            "My card got declined at {merchant} {when}.",
            "Why was my payment at {merchant} refused? I have money in the account.",
            "Tried to pay {merchant} and it said transaction declined.",
            "card keeps getting rejected at {merchant}",
            "I was embarrassed at {merchant} because my card didn't work.",
            "The payment to {merchant} won't go through, it just says declined.",
            "Can you tell me why {merchant} couldn't take my card?",
            "My card was refused online at {merchant}. Other sites work fine.",
            "I have plenty of balance but {merchant} says my card is declined.",
            "Payment failed at the till in {merchant}, twice.",
            "Why does my card not work at {merchant}?",
            "{merchant} declined my card {when}. What's wrong with it?",
            "Checkout at {merchant} keeps bouncing my card.",
            "Card denied at {merchant} even though I just topped up.",
            "I tried to buy something from {merchant} and the bank declined it.",
        ),
    ),
    Intent(
        "unknown_charge",
        "urgent",
        "Freeze your card in Cards > Freeze; our fraud team will review the {amount} charge.",
        (
            "There's a charge of {amount} from {merchant} that I didn't make.",
            "I don't recognise a {amount} payment on my statement.",
            "Who is {merchant}? They took {amount} from my account.",
            "I see {amount} to {merchant} {when} and it wasn't me.",
            "random {amount} charge on my card, never heard of {merchant}",
            "Someone has used my card, there's a {amount} transaction I never authorised.",
            "I have a payment of {amount} I don't know anything about.",
            "My account shows {amount} spent at {merchant} but I was at home all day.",
            "I think my card details were stolen. There's a {amount} purchase I didn't do.",
            "What is this {amount} debit from {merchant}? I never shopped there.",
            "There's an unauthorised charge for {amount} on my account.",
            "I didn't buy anything for {amount} {when}, but it's on my card.",
            "Strange transaction: {amount} at {merchant}. Not mine.",
            "A {amount} payment appeared that I definitely didn't approve.",
            "My card is still in my wallet but someone spent {amount} at {merchant}.",
        ),
    ),
    Intent(
        "transfer_pending",
        "normal",
        "Your {amount} transfer can take 1 working day; see Payments > History.",
        (
            "I sent {amount} to my sister {when} and she still hasn't received it.",
            "My transfer of {amount} is still showing as pending.",
            "How long does a transfer take? I sent {amount} {when}.",
            "The {amount} I transferred to my landlord hasn't arrived yet.",
            "sent {amount} to a friend, not there yet",
            "Where is the {amount} I sent {when}? The recipient says nothing came in.",
            "My {amount} payment to another bank is taking ages.",
            "I moved {amount} to my savings at another bank and it's not showing.",
            "When will my {amount} transfer reach the other account?",
            "My son is still waiting for the {amount} I sent him {when}.",
            "It's been a day and my {amount} bank transfer hasn't landed.",
            "The {amount} transfer says processing. Is that normal?",
            "Transferred {amount} {when}, the other side hasn't got it.",
            "Why is my {amount} transfer taking so long to reach them?",
            "I paid a supplier {amount} by transfer and they say it hasn't arrived.",
        ),
    ),
    Intent(
        "transfer_failed",
        "high",
        "Your {amount} transfer was returned; check the payee in Payments > Payees and resend.",
        (
            "My transfer of {amount} failed and I don't know why.",
            "I tried to send {amount} and got an error saying the transfer could not be completed.",
            "The {amount} I sent {when} bounced back to my account.",
            "transfer of {amount} rejected??",
            "Why was my {amount} payment to my landlord returned?",
            "I got a notification that my {amount} transfer was unsuccessful.",
            "My {amount} transfer says failed in the app. What happened?",
            "The money came back! I sent {amount} {when} and it was put back in my account.",
            "Every time I try to transfer {amount} it gets cancelled.",
            "The bank rejected my {amount} transfer to a new payee.",
            "I sent {amount} but it was reversed the next day.",
            "Transfer of {amount} didn't go through, it says payment failed.",
            "My {amount} transfer was declined, the account details look right to me.",
            "Why did my {amount} transfer get sent back?",
            "Sending {amount} to my friend keeps failing.",
        ),
    ),
    Intent(
        "refund_missing",
        "normal",
        "Refunds from {merchant} show within 5 working days; see Payments > Pending.",
        (
            "{merchant} said they refunded me {when} but I don't see it.",
            "I returned an order to {merchant} and the refund isn't in my account.",
            "Still no refund from {merchant}, it's been a week.",
            "Where is my refund from {merchant}?",
            "waiting on a refund from {merchant}",
            "{merchant} cancelled my order and promised the money back. Nothing yet.",
            "I was refunded by {merchant} {when} but my balance hasn't changed.",
            "How long do refunds take? {merchant} sent me a confirmation email.",
            "My refund from {merchant} is missing.",
            "I got a refund confirmation from {merchant} but no money.",
            "The shop {merchant} says the refund was processed. When will it show?",
            "{merchant} owes me a refund and says it's been sent to my card.",
            "I cancelled my {merchant} booking and the money still hasn't come back.",
            "Refund from {merchant} not showing on my card.",
            "I returned the item to {merchant} {when}. When does my money come back?",
        ),
    ),
    Intent(
        "foreign_fee",
        "low",
        "Payments in {city} use the network rate plus a 1% fee; see Cards > Fees.",
        (
            "Why was I charged an extra fee for a purchase in {city}?",
            "I paid for dinner in {city} and the amount on my statement is higher.",
            "What exchange rate do you use? I used my card in {city}.",
            "Is there a fee for using my card in {city}?",
            "extra charge on my payment in {city}??",
            "I'm travelling to {city} next month. Will my card cost extra there?",
            "My hotel bill in {city} came out higher than I expected in dollars.",
            "There's a foreign transaction fee on my purchases from {city}.",
            "How much do you charge for card payments in {city}?",
            "The conversion on my {city} purchases looks wrong.",
            "I bought souvenirs in {city} and there's a small extra fee on each one.",
            "Do you add a fee when I pay in local currency in {city}?",
            "Why did my taxi ride in {city} cost more on my statement than the meter said?",
            "Just got back from {city} and noticed fees on every transaction.",
            "What will I pay to use my card while I'm in {city}?",
        ),
    ),
    Intent(
        "atm_issue",
        "high",
        "We logged your {amount} ATM claim; the review takes up to 10 working days.",
        (
            "The ATM didn't give me my cash but took {amount} from my account.",
            "I withdrew {amount} {when} and the machine gave me nothing.",
            "ATM only gave me part of the {amount} I asked for.",
            "cash machine kept my money, {amount} gone",
            "I tried to take out {amount}, the ATM said error but I was still debited.",
            "The cash machine on Main Street charged me {amount} and didn't dispense anything.",
            "Withdrawal of {amount} failed at the ATM but it's on my account.",
            "I got less cash than the {amount} I requested.",
            "An ATM took {amount} from me without giving me the notes.",
            "My account shows an ATM withdrawal of {amount} but the money never came out.",
            "The machine beeped, no cash came out, and {amount} left my balance.",
            "The ATM at the mall swallowed my {amount} withdrawal.",
            "I only received half of the {amount} from the cash machine.",
            "ATM problem {when}: {amount} debited, no cash.",
            "How do I get back {amount} that an ATM didn't pay out?",
        ),
    ),
    Intent(
        "pin_blocked",
        "normal",
        f"Unblock your PIN at any {COMPANY} ATM or reset it in Cards > PIN.",
        (
            "I entered the wrong PIN three times and now my card is blocked.",
            "My PIN is locked, how do I unlock it?",
            "I forgot my PIN and the card got blocked at the shop.",
            "pin blocked after too many tries",
            "The terminal says PIN tries exceeded. What now?",
            "I can't remember my PIN. Can I get it reset?",
            "My card says PIN blocked {when}, I need to use it today.",
            "How can I change my PIN? I think someone saw me type it.",
            "Typed my PIN wrong a few times and now the card won't work at all.",
            "I need a new PIN, I've completely forgotten mine.",
            "The ATM told me my PIN is blocked.",
            "Can you unlock my PIN? I got it wrong too many times.",
            "Where can I see or reset my card PIN?",
            "PIN locked out {when}, please help",
            "I mixed up my PIN with my old card's and now it's blocked.",
        ),
    ),
    Intent(
        "app_login",
        "normal",
        "Tap Forgot passcode on the login screen; you will need your card and your phone.",
        (
            "I can't log in to the app.",
            "The app says my passcode is wrong but I'm sure it's right.",
            "I'm locked out of online banking.",
            "forgot my app passcode",
            f"After updating my phone the {COMPANY} app won't let me sign in.",
            "How do I reset my login for the mobile app?",
            "I got a new phone and can't get into my account in the app.",
            "The app keeps saying too many attempts, I can't access my account.",
            "I forgot the password for internet banking.",
            "Login stopped working {when}, it just spins.",
            "I can't get into the banking app, it asks for a passcode I don't remember.",
            "My fingerprint login stopped working and I don't know my passcode.",
            "Locked out of the app after entering the wrong passcode.",
            "How do I get back into my online account?",
            "The app logged me out {when} and now I can't sign back in.",
        ),
    ),
    Intent(
        "address_change",
        "low",
        "Update your address to {city} in Profile > Address; new cards and letters will go there.",
        (
            "I'm moving to {city} next month, how do I update my address?",
            "I've just moved to {city}. Where do I change my address?",
            "Need to change my home address, the new place is in {city}.",
            "moved to {city}, update address pls",
            "Can you send my post to my new address in {city}?",
            "We relocated to {city} {when}. How do I tell the bank?",
            "How do I change my address? I live in {city} now.",
            "My address on file is old, I'm in {city} these days.",
            "I'll be living in {city} from next week and need my cards sent there.",
            "Please update my address to my new flat in {city}.",
            "New address in {city}, how do I change it in my profile?",
            "My statements are going to my old house, I moved to {city}.",
            "Where in the app can I put my new {city} address?",
            "I'm relocating to {city} for work. What do I need to do about my address?",
            "Changed homes, now in {city}. Do I need to update anything?",
        ),
    ),
    Intent(
        "close_account",
        "low",
        "Move your balance out first, then close the account in Profile > Close account.",
        (
            "I want to close my account.",
            f"How do I shut down my {COMPANY} account?",
            "Please cancel my account, I'm switching banks.",
            "close my account pls",
            "I no longer need this account, how can I close it?",
            f"I'm leaving {COMPANY}. What's the process to close everything?",
            "Can I delete my bank account through the app?",
            "I'd like to terminate my account {when} if possible.",
            "How do I close my current account and take my money out?",
            "I'm moving my money to another bank and want this account closed.",
            "Please end my membership, I don't use the account anymore.",
            "What do I need to do to close my savings account?",
            "Cancel my account. I'm done.",
            "I opened this account by mistake, can I close it?",
            "I want to stop banking with you and close my account.",
        ),
    ),
)

LABELS: tuple[str, ...] = tuple(i.name for i in INTENTS)
PRIORITIES: tuple[str, ...] = ("urgent", "high", "normal", "low")

CARD_TYPES = (
    "Visa debit", "Mastercard credit", "Platinum credit", "Gold credit", "student debit",
    "business debit", "contactless debit", "travel", "Everyday debit", "Rewards credit",
)
MERCHANTS = (
    "Brightmart", "Zapflix", "CoffeeCove", "Railgo", "Greenleaf Grocers", "Urban Threads",
    "FlyNimbus", "Hotel Marisol", "Pete's Pizza", "QuickCab", "BookNook", "Voltline Energy",
    "Fitzone Gym", "PixelPlay", "Harbor Hardware", "Lumo Electronics", "SkyBazaar",
    "Tandem Travel", "Mira Pharmacy", "Oakridge Cinema", "Nimbus Mobile", "Petal & Pot",
    "Driftwood Diner", "Kiwi Kicks",
)
CITIES_ABROAD = (
    "Lisbon", "Tokyo", "Mexico City", "Berlin", "Cape Town", "Oslo", "Hanoi", "Lima", "Istanbul",
    "Prague", "Seoul", "Marrakesh", "Reykjavik", "Buenos Aires", "Bangkok", "Dublin", "Athens",
    "Zurich", "Nairobi", "Copenhagen",
)
CITIES_HOME = (
    "Portland", "Austin", "Denver", "Boston", "Tucson", "Madison", "Raleigh", "Spokane", "Omaha",
    "Savannah", "Boise", "Richmond", "Albany", "Fresno", "Duluth", "Tulsa", "Chattanooga", "Reno",
)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
WHEN_FIXED = (
    "yesterday", "on Monday", "last Friday", "three days ago", "this morning", "last week",
    "two weeks ago", "on Tuesday", "at the weekend", "a few days ago",
)

OPENERS = ("Hi,", "Hello.", "Hey", "Hi there.", "Good afternoon.", f"Hi {COMPANY},", "Hello,")
FORMAL_OPENERS = (f"Dear {COMPANY} team,", "Good morning,", "To whom it may concern,")
# Neutral context: realistic padding that says nothing about the intent.
CONTEXT = (
    "I've been a customer for years.",
    "Sorry if this is the wrong place to ask.",
    "I'm writing from my phone.",
    "This is the second time I'm asking about this.",
    "It's a joint account with my partner.",
    "I'm not very good with apps.",
    "Quick question.",
)
CLOSERS = ("Thanks.", "Thanks in advance!", "Please help.", "Cheers", "What should I do?",
           "Can you sort this out?", "Appreciate it.", "Any idea?")
FORMAL_CLOSERS = ("Kind regards.", "Many thanks for your help.", "Best regards.")
ANGRY_CLOSERS = ("This is ridiculous!", "Sort it out!", "Really not happy.", "Fix this now!")
CASUAL_SWAPS = ((r"\byou\b", "u"), (r"\bplease\b", "pls"), (r"\bthanks\b", "thx"),
                (r"\bI'm\b", "im"), (r"\bdon't\b", "dont"), (r"\bcan't\b", "cant"))

_SLOT = re.compile(r"(\{[a-z]+\})")
# Words an amount may not precede in its "45 dollars" spelling ("45 dollars transfer" reads wrong).
_AMOUNT_AS_ADJECTIVE = re.compile(
    r"\{amount\} (?:transfer|payment|charge|bank|ATM|purchase|debit|transaction|withdrawal)"
)


def reply_slots(intent: Intent) -> set[str]:
    """The slot names the house reply copies from the message (e.g. {"amount"})."""
    return {s.strip("{}") for s in _SLOT.findall(intent.reply)}


def check_templates() -> None:
    """Every template must carry the slots its reply copies (else the label is not inferable)."""
    for intent in INTENTS:
        for template in intent.templates:
            present = {s.strip("{}") for s in _SLOT.findall(template)}
            missing = reply_slots(intent) - present - {"card"}  # no card type -> reply says "card"
            assert not missing, f"{intent.name}: {template!r} lacks {missing}"
            if "card" in reply_slots(intent):
                assert "card" in present, f"{intent.name}: {template!r} lacks {{card}}"


def sample_amount(rng: random.Random, intent: str) -> str:
    """A canonical dollar amount as the reply writes it: $45.20, $300, $1,250."""
    if intent == "atm_issue":
        value = rng.choice((20, 40, 60, 80, 100, 120, 200, 250, 300, 400, 500))
        return f"${value}"
    kind = rng.random()
    if kind < 0.4:
        return f"${rng.randint(3, 99)}.{rng.randint(0, 99):02d}"
    if kind < 0.8:
        return f"${rng.randint(1, 19) * 50}" if rng.random() < 0.5 else f"${rng.randint(100, 999)}"
    return f"${rng.randint(10, 60) * 100:,}"


def surface_amount(rng: random.Random, canonical: str, template: str) -> str:
    """How the customer writes the amount; the reply always uses the canonical $ form."""
    number = canonical[1:]
    roll = rng.random()
    if roll < 0.12:
        return f"USD {number}"
    if roll < 0.25 and not _AMOUNT_AS_ADJECTIVE.search(template):
        return f"{number} dollars"
    return canonical


def sample_when(rng: random.Random) -> str:
    """A time expression; context only, never copied into the reply."""
    if rng.random() < 0.3:
        return f"on {rng.randint(1, 28)} {rng.choice(MONTHS)}"
    return rng.choice(WHEN_FIXED)


def sample_slots(rng: random.Random, intent: Intent, template: str) -> tuple[dict[str, str], dict[str, str]]:
    """(values written in the message, values written in the reply)."""
    amount = sample_amount(rng, intent.name)
    # A quarter of card messages do not name the card type; the reply then says just "card".
    card = f"{rng.choice(CARD_TYPES)} card" if rng.random() < 0.75 else "card"
    city = rng.choice(CITIES_HOME if intent.name == "address_change" else CITIES_ABROAD)
    in_reply = {"amount": amount, "card": card, "merchant": rng.choice(MERCHANTS), "city": city}
    in_message = dict(in_reply, amount=surface_amount(rng, amount, template), when=sample_when(rng))
    return in_message, in_reply


def map_text(text: str, fn) -> str:
    """Apply `fn` to the literal text only, leaving {slot} placeholders intact."""
    return "".join(part if _SLOT.fullmatch(part) else fn(part) for part in _SLOT.split(text))


def add_typo(word: str, rng: random.Random) -> str:
    """One keyboard slip: swapped, dropped or doubled letter."""
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def add_typos(text: str, rng: random.Random, count: int) -> str:
    """Misspell `count` alphabetic words of at least 4 letters (never a placeholder)."""
    tokens = text.split(" ")
    candidates = [i for i, t in enumerate(tokens) if t.isalpha() and len(t) >= 4]
    for i in rng.sample(candidates, min(count, len(candidates))):
        tokens[i] = add_typo(tokens[i], rng)
    return " ".join(tokens)


def casual(text: str, rng: random.Random) -> str:
    """Lower-case, texting abbreviations, no final full stop."""
    text = text.lower()
    for pattern, repl in CASUAL_SWAPS:
        if rng.random() < 0.7:
            text = re.sub(pattern, repl, text, flags=re.IGNORECASE)
    return text.rstrip(".")


def sentence_case(text: str, after_comma: bool) -> str:
    """Capitalize a sentence start, or lower it after "Hi Quillfield," (but never the pronoun I)."""
    if text[0] == "{":
        return text
    if after_comma:
        pronoun = text[0] == "I" and (len(text) == 1 or not text[1].isalpha())
        return text if pronoun or text[:3].isupper() else text[0].lower() + text[1:]
    return text[0].upper() + text[1:]


def compose_message(rng: random.Random, template: str) -> str:
    """Wrap the core template in a register: openers, context, closers, case and typos."""
    register = rng.choices(("neutral", "casual", "formal", "angry"), weights=(55, 22, 12, 11))[0]
    parts: list[str] = []
    if register == "formal":
        parts.append(rng.choice(FORMAL_OPENERS))
    elif rng.random() < 0.3:
        parts.append(rng.choice(OPENERS))
    if rng.random() < 0.15:
        parts.append(rng.choice(CONTEXT))
    parts.append(template)
    # "Hi Quillfield, is there..." but "Hello. Is there...": the case follows what precedes.
    parts = [sentence_case(p, after_comma=i > 0 and parts[i - 1][-1] not in ".!?")
             for i, p in enumerate(parts)]
    if register == "formal":
        parts.append(rng.choice(FORMAL_CLOSERS))
    elif register == "angry":
        parts.append(rng.choice(ANGRY_CLOSERS))
    elif rng.random() < 0.25:
        parts.append(rng.choice(CLOSERS))
    text = " ".join(parts)
    if register == "casual":
        text = map_text(text, lambda s: casual(s, rng))
    elif register == "angry" and rng.random() < 0.5:
        text = map_text(text, str.upper)
    if rng.random() < 0.3:
        text = map_text(text, lambda s: add_typos(s, rng, rng.choice((1, 1, 2))))
    return text


def answer_json(intent: Intent, slots: dict[str, str]) -> str:
    """The assistant turn: one line of JSON, keys in a fixed order."""
    reply = intent.reply.format(**slots)
    reply = reply[0].upper() + reply[1:]
    return json.dumps({"intent": intent.name, "priority": intent.priority, "reply": reply},
                      ensure_ascii=False)


def make_example(rng: random.Random, intent: Intent) -> tuple[str, str]:
    """One (user message, assistant answer) pair for `intent`."""
    template = rng.choice(intent.templates)
    in_message, in_reply = sample_slots(rng, intent, template)
    message = compose_message(rng, template).format(**in_message)
    return message, answer_json(intent, in_reply)


def normalize(text: str) -> str:
    """Key for duplicate checks: case, punctuation and digits do not make a message new."""
    text = re.sub(r"\d", "0", text.lower())
    return " ".join(re.sub(r"[^a-z0 ]+", " ", text).split())


def is_near_duplicate(a: str, b: str) -> bool:
    """Two normalized messages that differ only by a word or two (cheap bounds first)."""
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return (
        matcher.real_quick_ratio() >= NEAR_DUP_RATIO
        and matcher.quick_ratio() >= NEAR_DUP_RATIO
        and matcher.ratio() >= NEAR_DUP_RATIO
    )


def chat_row(message: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]}


def generate_splits(seed: int = SEED) -> dict[str, list[tuple[str, str, str]]]:
    """Rows (intent, message, answer) per split, balanced per intent, leak-free.

    Test is drawn first, then val, then train, and a candidate is rejected when it repeats any
    earlier message or nearly repeats one from another split, so held-out scores measure
    generalization to new phrasings rather than recall.
    """
    rng = random.Random(seed)
    splits: dict[str, list[tuple[str, str, str]]] = {name: [] for name in PER_INTENT}
    seen: set[str] = set()
    # Near-duplicate candidates are only looked for within the same intent: messages of
    # different intents come from different templates (the unit test checks all pairs anyway).
    held_out: dict[str, list[str]] = {name: [] for name in LABELS}
    for split, per_intent in PER_INTENT.items():
        for _ in range(per_intent):
            for intent in INTENTS:
                for _attempt in range(500):
                    message, answer = make_example(rng, intent)
                    key = normalize(message)
                    if key in seen:
                        continue
                    if split == "train" and any(is_near_duplicate(key, o) for o in held_out[intent.name]):
                        continue
                    break
                else:
                    raise RuntimeError(f"could not draw a new {intent.name} message for {split}")
                seen.add(key)
                if split != "train":
                    held_out[intent.name].append(key)
                splits[split].append((intent.name, message, answer))
        rng.shuffle(splits[split])
    check_splits(splits)
    return splits


def check_splits(splits: dict[str, list[tuple[str, str, str]]]) -> None:
    """Internal invariants: valid answers, no duplicates, no leakage into val/test."""
    keys: dict[str, set[str]] = {}
    for split, rows in splits.items():
        keys[split] = {normalize(m) for _, m, _ in rows}
        assert len(keys[split]) == len(rows), f"duplicate user messages in {split}"
        for intent, message, answer in rows:
            parsed = json.loads(answer)
            assert parsed["intent"] == intent and intent in LABELS, answer
            assert "{" not in message and "}" not in message, message
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"], "exact leakage"
    assert not keys["val"] & keys["test"], "val/test overlap"
    for held in ("val", "test"):
        for a in keys[held]:
            assert not any(is_near_duplicate(a, b) for b in keys["train"]), f"near-duplicate: {a}"


# A short help-center FAQ that states the same facts the replies use (raw-text format demo).
FAQ: tuple[tuple[str, str], ...] = (
    ("When will my new card arrive?",
     "New and replacement cards are posted within 5 working days. You can follow the delivery in "
     "the app under Cards > Delivery. If your card has not arrived after 10 working days, tell us "
     "and we will cancel it and send another one."),
    ("Tracking a card delivery",
     "Open Cards > Delivery to see when your card was printed, when it left our mail center and "
     "the expected delivery date. Cards are sent in a plain white envelope."),
    ("I lost my card or it was stolen",
     "Freeze the card straight away in Cards > Freeze. A frozen card cannot be used for payments "
     "or cash. A free replacement ships the same day, and your card number changes."),
    ("Freezing and unfreezing a card",
     "Freezing is instant and can be undone. If you find your card again, open Cards > Freeze and "
     "switch it back on. If you already ordered a replacement, the old card stays blocked."),
    ("Why was my card declined?",
     "The most common reasons are a daily spending limit, a frozen card, a wrong PIN or an online "
     "shop that needs extra verification. Check your limits in Cards > Limits and try again."),
    ("Spending limits",
     "Every card has a daily limit for payments and one for cash. You can raise or lower them in "
     "Cards > Limits. Changes take effect immediately."),
    ("There is a payment I do not recognise",
     "First check the merchant name: some shops use a different name on statements. If the "
     "payment is not yours, freeze your card in Cards > Freeze and report it. Our fraud team "
     "reviews reported charges the same day."),
    ("How we protect you from fraud",
     f"{COMPANY} Bank refunds payments you did not make once the fraud team has reviewed them. "
     "We will never ask for your full PIN or passcode by phone, email or text."),
    ("How long does a bank transfer take?",
     "Transfers between accounts at any bank usually arrive within minutes but can take up to 1 "
     "working day. Transfers made at the weekend arrive on the next working day. Follow a "
     "transfer in Payments > History."),
    ("My transfer is pending",
     "A pending transfer is still being processed. You do not need to do anything. If it is "
     "still pending after 1 working day, contact us from Payments > History."),
    ("My transfer was returned",
     "A transfer is returned when the receiving bank rejects it, most often because the account "
     "number or name does not match. The money goes back to your account. Check the details in "
     "Payments > Payees and send it again."),
    ("Adding and editing payees",
     "Add a new payee in Payments > Payees. We check the name against the account before your "
     "first payment and warn you if they do not match."),
    ("Where is my refund?",
     "Refunds are sent by the merchant, not by us. They appear within 5 working days of the "
     "merchant issuing them. Until then they may show in Payments > Pending."),
    ("Refunds for cancelled orders",
     "When a shop cancels an order before charging you, the held amount is released instead of "
     "refunded. It disappears from Payments > Pending within a few days."),
    ("Using your card abroad",
     "Card payments and cash withdrawals in another currency use the card network's exchange "
     "rate plus a 1% foreign fee. You can see the rate and the fee for each payment in "
     "Cards > Fees."),
    ("Should I pay in dollars or in the local currency?",
     "Always choose the local currency. If a shop abroad converts to dollars for you, it sets "
     "its own rate, which is usually worse than the network rate plus our 1% fee."),
    ("The ATM did not give me my cash",
     "If an ATM took money from your account but did not pay out, report it in Help > Claims. "
     "We contact the ATM operator and the review takes up to 10 working days."),
    ("Withdrawing cash",
     f"You can withdraw cash at any ATM. {COMPANY} ATMs are free; other operators may charge a "
     "fee, which the machine shows before you confirm."),
    ("My PIN is blocked",
     f"After three wrong PIN entries the PIN is blocked. Unblock it at any {COMPANY} ATM by "
     "choosing PIN services, or reset it in the app under Cards > PIN."),
    ("Seeing or changing your PIN",
     "You can view your PIN in Cards > PIN after confirming with your passcode. To choose a new "
     "PIN, use PIN services at one of our ATMs."),
    ("I cannot log in to the app",
     "Tap Forgot passcode on the login screen. You will need your card and the phone number we "
     "have on file. After five wrong passcodes the app pauses logins for 30 minutes."),
    ("Using the app on a new phone",
     "Install the app, tap Log in and confirm with a code we text to your number. Your old phone "
     "is signed out automatically."),
    ("Changing your address",
     "Update your address in Profile > Address. New cards, statements and letters go to the new "
     "address from the next working day. We may ask for proof of address."),
    ("Changing your name or phone number",
     "Change your phone number in Profile > Contact. For a name change, upload your document in "
     "Profile > Documents and we update your cards within 5 working days."),
    ("Closing your account",
     "Move your balance out first, then close the account in Profile > Close account. Cancel any "
     "direct debits and standing orders before you close it."),
    ("Switching to another bank",
     "Your new bank can move your balance and payments for you. Once the switch is done, the "
     f"{COMPANY} account closes automatically."),
    ("Statements",
     "Monthly statements are in Accounts > Statements as PDF files. Statements for the last 7 "
     "years are available there."),
    ("Direct debits",
     "See and cancel direct debits in Payments > Direct debits. A cancelled direct debit stops "
     "from the next payment date; tell the company too."),
    ("Contacting support",
     "Chat with us in Help > Chat at any time. Urgent problems such as a lost card or an unknown "
     "payment are answered first."),
    ("Opening hours",
     "Chat support is open around the clock. Phone support is open from 8am to 8pm, Monday to "
     "Saturday."),
)


def readme_text(splits: dict[str, list[tuple[str, str, str]]], n_pc: int) -> str:
    """The dataset card, with counts computed from the generated rows."""
    header = "| intent | priority | train | val | test |\n|---|---|---:|---:|---:|\n"
    counts = {s: {label: sum(r[0] == label for r in rows) for label in LABELS} for s, rows in splits.items()}
    table = "".join(
        f"| `{i.name}` | {i.priority} | {counts['train'][i.name]} | {counts['val'][i.name]} | "
        f"{counts['test'][i.name]} |\n"
        for i in INTENTS
    )
    total = (f"| **total** | | {len(splits['train'])} | {len(splits['val'])} | "
             f"{len(splits['test'])} |\n")
    example = splits["test"][0]
    return f"""# Example dataset: {COMPANY} Bank customer support

Synthetic customer-support chats for {COMPANY} Bank, a fictional retail bank. tunecraft's demo
fine-tunes the default model on it and scores the result. Everything here is generated by

    python examples/make_examples.py

(seeded, standard library only; a re-run writes the same bytes, and
`tests/unit/test_examples.py` checks that).

## Files

| file | format | rows | use |
|---|---|---:|---|
| `train.jsonl` | chat | {len(splits['train'])} | training |
| `val.jsonl` | chat | {len(splits['val'])} | validation loss during training |
| `test.jsonl` | chat | {len(splits['test'])} | held-out evaluation (never trained on) |
| `train_pc.jsonl` | prompt/completion | {n_pc} | the same task in the prompt/completion format |
| `docs.jsonl` | raw text | {len(FAQ)} | help-center FAQ, for domain-adaptation demos |

Chat rows are `{{"messages": [{{"role": "user", ...}}, {{"role": "assistant", ...}}]}}` with
no system message.

## Answer format

The assistant answers with one line of JSON, keys always in this order:

    {{"intent": "<label>", "priority": "<urgent|high|normal|low>", "reply": "<house reply>"}}

- `intent` is one of the {len(LABELS)} labels below (accuracy, macro-F1).
- `priority` is fixed per intent.
- `reply` is the intent's house template, one sentence. Most templates copy one value from the
  customer's message: the card type (`Visa debit card`, or just `card` when the customer does
  not name it), the merchant, the amount (always written `$45.20` / `$1,250`, even when the
  customer wrote `45.20 dollars` or `USD 1,250`) or the city.

So the whole answer can be scored by exact match, JSON validity, intent accuracy, and token F1 /
ROUGE-L on `reply`. Example (test row 1):

    user:      {example[1]}
    assistant: {example[2]}

## Labels and counts

{header}{table}{total}
## How the messages are made

Each intent has 15-16 paraphrase templates with slots (card types, {len(MERCHANTS)} merchants,
amounts, dates, {len(CITIES_ABROAD)} cities abroad, {len(CITIES_HOME)} home cities). A message
may get an opener, a neutral context sentence and a closer, a register (neutral, casual
lower-case with texting abbreviations, formal, angry) and one or two typos. Intents share
vocabulary on purpose ("declined" appears in card and transfer messages, "locked out" in PIN
and app messages), so the label needs the sentence, not a keyword.

## Leakage checks

Test is drawn first, then val, then train. A message is rejected if its normalized form
(lower-case, no punctuation, digits masked) repeats any earlier message, or if a training
message is a near-duplicate (difflib ratio >= {NEAR_DUP_RATIO}) of a val or test message. The
generator asserts this; the unit test re-checks all pairs. Templates are shared across splits
(the test measures new combinations of phrasing, slots and noise, not unseen intents).
"""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def prompt_completion_rows(train: list[tuple[str, str, str]]) -> list[dict]:
    """The first PC_PER_INTENT training rows of each intent, as prompt/completion."""
    taken: dict[str, int] = {label: 0 for label in LABELS}
    rows = []
    for intent, message, answer in train:
        if taken[intent] < PC_PER_INTENT:
            taken[intent] += 1
            rows.append({"prompt": message, "completion": answer})
    return rows


def write_all(out: Path, seed: int = SEED) -> None:
    """Generate every file of the example dataset into `out`."""
    check_templates()
    splits = generate_splits(seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_jsonl(out / f"{split}.jsonl", [chat_row(m, a) for _, m, a in rows])
    pc_rows = prompt_completion_rows(splits["train"])
    write_jsonl(out / "train_pc.jsonl", pc_rows)
    write_jsonl(out / "docs.jsonl", [{"text": f"{title}\n\n{body}"} for title, body in FAQ])
    (out / "README.md").write_text(readme_text(splits, len(pc_rows)), encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "support",
                        help="output directory (default: examples/support next to this script)")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    write_all(args.out, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
