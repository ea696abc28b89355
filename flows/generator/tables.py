"""What the generated world is made of: the catalog, names, places and the odds of things.

Data only, no draws: changing a table or a probability changes the stream of every seed
(`tests/unit/test_generator.py` checks the shapes and rates that follow from them).
The product catalog is copied from `shared/data/luma/luma-products.json` so the demo needs
nothing outside this tree.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]  # one record as orjson writes it

DAY_MS = 86_400_000
SPAN_DAYS = 14
SPAN_MS = SPAN_DAYS * DAY_MS
JUNK_LINES = 5  # bad lines `write_files(junk=True)` puts into web.jsonl
ZIPF_EXPONENT = 0.85
ZIPF_OFFSET = 3.0  # Zipf-Mandelbrot: keeps the very top from being a single bot-like profile

# Source name -> its file in the demo directory; config/demo.yaml reads these names.
SOURCE_FILES = {
    "crm": "crm.json",
    "loyalty": "loyalty.json",
    "web": "web.jsonl",
    "voice": "voice.jsonl",
    "store": "store.jsonl",
}

# (SKU, name, category, price) from luma-products.json; the group index picks voice queries.
PRODUCTS: tuple[tuple[str, str, str, float], ...] = (
    ("LLMS01", "Aero Daily Fitness Tee", "men:tops:tees", 24.0),
    ("LLWS05", "Desiree Fitness Tee", "women:tops:tees", 24.0),
    ("LLWS01", "Gwyn Endurance Tee", "women:tops:tees", 24.0),
    ("LLMS08", "Strike Endurance Tee", "men:tops:tees", 39.0),
    ("LLWS11", "Diva Gym Tee", "women:tops:tees", 32.0),
    ("LLWS10", "Karissa V-Neck Tee", "women:tops:tees", 32.0),
    ("LLWS12", "Radiant Tee", "women:tops:tees", 22.0),
    ("LLMT11", "Atlas Fitness Tank", "men:tops:tanks", 18.0),
    ("LLMT09", "Sinbad Fitness Tank", "men:tops:tanks", 29.0),
    ("LLMT08", "Sparta Gym Tank", "men:tops:tanks", 29.0),
    ("LLWT08", "Antonia Racer Tank", "women:tops:bras_tanks", 34.0),
    ("LLWB05", "Lucia Cross-Fit Bra", "women:tops:bras_tanks", 39.0),
    ("LLMP12", "Cronus Yoga Pant", "men:bottoms:pants", 38.4),
    ("LLMP10", "Orestes Yoga Pant", "men:bottoms:pants", 52.8),
    ("LLMP08", "Zeppelin Yoga Pant", "men:bottoms:pants", 65.6),
    ("LLWP10", "Daria Bikram Pant", "women:bottoms:pants", 40.8),
    ("LLWP11", "Sylvia Capri", "women:bottoms:pants", 33.6),
    ("LLWSH10", "Ana Running Short", "women:bottoms:shorts", 40.0),
    ("LLWSH12", "Erika Running Short", "women:bottoms:shorts", 45.0),
    ("LLMSH12", "Pierce Gym Short", "men:bottoms:shorts", 27.0),
    ("LLMSH09", "Troy Yoga Short", "men:bottoms:shorts", 24.0),
    ("LLMH09", "Abominable Hoodie", "men:tops:hoodies_sweatshirts", 69.0),
    ("LLMH10", "Mach Street Sweatshirt", "men:tops:hoodies_sweatshirts", 62.0),
    ("LLWH05", "Selene Yoga Hoodie", "women:tops:hoodies", 42.0),
    ("LLWH12", "Circe Hooded Ice Fleece", "women:tops:hoodies", 68.0),
    ("LLWJ08", "Adrienne Trek Jacket", "women:tops:jackets", 57.0),
    ("LLWJ09", "Jade Yoga Jacket", "women:tops:jackets", 32.0),
    ("LLMJ03", "Montana Wind Jacket", "men:tops:jackets", 49.0),
    ("LLMJ06", "Jupiter All-Weather Trainer", "men:tops:jackets", 56.99),
    ("24-UG06", "Affirm Water Bottle", "products:gear:fitness", 7.0),
    ("24-UG04", "Zing Jump Rope", "products:gear:fitness", 12.0),
    ("24-WG088", "Sprite Foam Roller", "products:gear:fitness", 19.0),
    ("24-WG080", "Sprite Yoga Companion Kit", "products:gear:fitness", 61.0),
    ("24-UG05", "Go-Get'r Pushup Grips", "products:gear:fitness", 19.0),
    ("24-MG01", "Endurance Watch", "products:gear:watches", 49.0),
    ("24-MG02", "Dash Digital Watch", "products:gear:watches", 92.0),
    ("24-WG02", "Didi Sport Watch", "products:gear:watches", 99.0),
    ("24-WB04", "Push It Messenger Bag", "products:gear:bags", 45.0),
    ("24-UB02", "Impulse Duffle", "products:gear:bags", 74.0),
    ("Luma-24-MB02", "Fusion Backpack", "products:gear:bags", 59.0),
)

# Interest groups: (product indexes, what such a person asks the voice assistant for).
GROUPS: tuple[tuple[tuple[int, ...], tuple[str, ...]], ...] = (
    (tuple(range(12)), ("fitness shirts", "fitness shirts", "running tank", "gym tee")),
    (tuple(range(12, 21)), ("yoga pants", "yoga pants", "running shorts")),
    (tuple(range(21, 29)), ("hoodies", "rain jacket")),
    (tuple(range(29, 40)), ("water bottle", "running shoes", "sports watch", "gym bag")),
)

# fmt: off
FIRST_NAMES: tuple[tuple[str, str | None], ...] = (
    ("Danny", "male"), ("Claudian", "male"), ("Romy", "female"), ("Morris", "male"),
    ("Dulcy", None), ("Kate", "female"), ("Bill", "male"), ("Liz", "female"),
    ("Tom", "male"), ("Ana", "female"), ("Jorge", "male"), ("Mei", "female"),
    ("Priya", "female"), ("Omar", "male"), ("Sofia", "female"), ("Lukas", "male"),
    ("Aisha", "female"), ("Noah", "male"), ("Elena", "female"), ("Kenji", "male"),
    ("Fatima", "female"), ("Marco", "male"), ("Ingrid", "female"), ("Tariq", "male"),
    ("Chloe", None), ("Diego", "male"), ("Hana", "female"), ("Sam", None),
    ("Nadia", "female"), ("Pavel", "male"), ("Grace", "female"), ("Ravi", "male"),
)
NICKNAMES = {
    "Danny": "Daniel", "Kate": "Katherine", "Bill": "William", "Liz": "Elizabeth",
    "Tom": "Thomas", "Sam": "Samantha",
}
LAST_NAMES = (
    "Wright", "Smartman", "Soppett", "Aitkenhead", "Satterthwaite", "Garcia", "Nguyen",
    "Okafor", "Schmidt", "Rossi", "Kowalski", "Tanaka", "Haddad", "Silva", "Johansson",
    "Murphy", "Patel", "Chen", "Dubois", "Novak", "Fischer", "Moreau", "Kim", "Lopez",
    "Andersen", "Costa", "Brennan", "Yilmaz", "Ivanova", "Mensah",
)
CITIES = (
    "Portland", "New York City", "Seattle", "Denver", "Austin", "Chicago", "Boston",
    "San Jose", "Miami", "Atlanta", "Phoenix", "Minneapolis", "Salt Lake City", "Madison",
    "Carahue", "Loja", "Tamanan", "Yinyang",
)
# fmt: on
DOMAINS = ("example.com", "example.org", "example.net")
PAGES = ("home", "men", "women", "gear", "sale", "search", "new-arrivals", "yoga-collection")
LEVELS = ("bronze", "silver", "gold", "platinum")
LEVEL_WEIGHTS = (0.35, 0.30, 0.22, 0.13)
OTHER_INTENTS = ("order_status", "store_hours", "add_to_list")

P_CRM = 0.8
P_LOYALTY = 0.5
P_SPEAKER = 0.25
P_CRM_NO_CONTACT = 0.10  # CRM rows with null email and phone
P_CRM_EMAIL_VARIANT = 0.12  # CRM email differs in case/whitespace from the login
P_LOYALTY_CRM_LOST = 0.03  # loyalty rows of CRM people whose crmId is still null
P_STORE = 0.12  # of a loyalty member's events
P_VOICE = 0.20  # of a speaker owner's events
