"""A seeded generator of a Luma-like retail stream (DESIGN §9).

People with Zipf-distributed activity browse the web shop and the app on 1-3 devices each.
A device is anonymous (only its ECID) until someone logs in on it: the `userAccount.login`
event carries the ECID and the person's Email, which is how devices join the person. Voice
assistants join through an account-link intent that carries the VoiceId and the Email, store
purchases carry only a loyalty id, and the CRM and loyalty exports tie the rest together, with
the gaps real exports have (null emails and phones, null crmIds, emails that differ from the
login in case and whitespace). A couple of family tablets are shared by two people.

Deterministic for a given seed: one `random.Random`, no wall clock, no hash-ordered iteration.
Self-contained: the product catalog is copied from `shared/data/luma/luma-products.json` so
the demo needs nothing outside this tree.

The modules (other code imports only the names re-exported here):
    tables  the catalog, names, places, probabilities and constants (data only)
    draws   seeded picks and ids (ECIDs, event ids, order numbers)
    people  persons, their devices, activity and shared tablets; CRM and loyalty rows
    events  web, voice and store events, and placing sessions in time
    stream  `generate`: the whole stream from one seed, and the truth behind it
    files   `write_files`: the stream as the demo's source files, with optional junk lines
"""

from flows.generator.files import write_files
from flows.generator.stream import GeneratedStream, generate
from flows.generator.tables import JUNK_LINES, PRODUCTS, SOURCE_FILES, SPAN_DAYS

__all__ = [
    "JUNK_LINES",
    "PRODUCTS",
    "SOURCE_FILES",
    "SPAN_DAYS",
    "GeneratedStream",
    "generate",
    "write_files",
]
