"""The tool-calling demo: a user asks for something, the model calls the right function with the right arguments.

```
tools   get_weather, book_table, convert_currency, ... (the function and two others are offered on each row)
input   "Book a table at Luigi's for 4 people at 19:30, outside please."
output  {"name": "book_table", "arguments": {"restaurant": "Luigi's", "people": 4, "time": "19:30", "seating": "outdoor"}}
no tool "Write me a short poem about the sea." → "I'm sorry, none of the available tools can do that." (refused)
```
Rows are grouped by function (lineage.source_id "fn:<name>"), so the round's test split holds functions that
training never saw: what the eval measures is calling an unseen function from its definition.
"""

from __future__ import annotations

from tuneloop.data.create.synth import Choice, enum, pool
from tuneloop.data.create.tool_tasks import ToolFunction

CITIES = pool(["Oslo", "Lyon", "Nairobi", "Osaka", "Porto", "Denver", "Hanoi", "Quito"])
NUMBERS = tuple(Choice(str(n), n) for n in range(1, 9))


def _obj(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required}


CATALOGUE = (
    ToolFunction("get_weather", "Current weather for a city",
                 _obj({"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                                                            "default": "celsius"}}, ["city"]),
                 ("What's the weather in {city}[ in {unit}]?", "Is it cold in {city} right now?[ Use {unit}.]"),
                 {"city": "{city}", "unit": "{unit}"},
                 {"city": CITIES, "unit": enum({"celsius": ["Celsius"], "fahrenheit": ["Fahrenheit"]})}),
    ToolFunction("book_table", "Reserve a restaurant table",
                 _obj({"restaurant": {"type": "string"}, "people": {"type": "integer", "minimum": 1},
                       "time": {"type": "string"},
                       "seating": {"type": "string", "enum": ["indoor", "outdoor"]}}, ["restaurant", "people", "time"]),
                 ("Book a table at {restaurant} for {people} people at {time}[, {seating} please].",
                  "Reserve {restaurant} at {time} for {people}[, {seating}]."),
                 {"restaurant": "{restaurant}", "people": "{people}", "time": "{time}", "seating": "{seating}"},
                 {"restaurant": pool(["Luigi's", "Sakura", "The Oak", "Casa Maria"]), "people": NUMBERS,
                  "time": pool(["18:00", "19:30", "20:15", "12:45"]),
                  "seating": enum({"outdoor": ["outside"], "indoor": ["inside"]})}),
    ToolFunction("convert_currency", "Convert an amount between currencies",
                 _obj({"amount": {"type": "number"}, "source": {"type": "string", "enum": ["USD", "EUR", "JPY", "GBP"]},
                       "target": {"type": "string", "enum": ["USD", "EUR", "JPY", "GBP"]}}, ["amount", "source", "target"]),
                 ("Convert {amount} {source} to {target}.", "How much is {amount} {source} in {target}?"),
                 {"amount": "{amount}", "source": "{source}", "target": "{target}"},
                 {"amount": tuple(Choice(t, v) for t, v in (("12.5", 12.5), ("100", 100), ("49.99", 49.99))),
                  "source": pool(["USD", "EUR"]), "target": pool(["JPY", "GBP"])}),
    ToolFunction("track_order", "Shipping status of an order",
                 _obj({"order_id": {"type": "string", "pattern": "^[A-Z][0-9]{5}$"}}, ["order_id"]),
                 ("Where is my order {order_id}?", "Track order {order_id} for me."),
                 {"order_id": "{order_id}"}, {"order_id": pool(["A12345", "K48291", "Z00017", "M55120"])}),
    ToolFunction("set_reminder", "Remind the user of something at a time",
                 _obj({"text": {"type": "string"}, "time": {"type": "string"}}, ["text", "time"]),
                 ("Remind me to {text} at {time}.", "At {time}, remind me to {text}."),
                 {"text": "{text}", "time": "{time}"},
                 {"text": pool(["call mom", "water the plants", "pay rent"]), "time": pool(["08:00", "17:30", "21:00"])}),
    ToolFunction("send_email", "Send an email",
                 _obj({"to": {"type": "string"}, "subject": {"type": "string"},
                       "cc": {"type": "array", "items": {"type": "string"}}}, ["to", "subject"]),
                 ("Email {to} with the subject \"{subject}\"[ and cc {cc}].",),
                 {"to": "{to}", "subject": "{subject}", "cc": "{cc}"},
                 {"to": pool(["ana@example.com", "li@example.com"]), "subject": pool(["Budget", "Lunch on Friday"]),
                  "cc": (Choice("bo@example.com", ["bo@example.com"]),)}),
    ToolFunction("create_event", "Add an event to the calendar",
                 _obj({"title": {"type": "string"}, "date": {"type": "string", "format": "date"},
                       "location": _obj({"city": {"type": "string"}, "room": {"type": "string"}}, ["city"])},
                      ["title", "date"]),
                 ("Put \"{title}\" on my calendar for {date}[ in {city}].",),
                 {"title": "{title}", "date": "{date}", "location": {"city": "{city}"}},
                 {"title": pool(["Team sync", "Dentist", "Yoga"]), "date": pool(["2025-03-14", "2025-07-01"]),
                  "city": CITIES}),
    # functions the test split may hold: nothing about them is special, the split decides
    ToolFunction("book_flight", "Book a flight",
                 _obj({"origin": {"type": "string"}, "destination": {"type": "string"},
                       "passengers": {"type": "integer", "minimum": 1},
                       "cabin": {"type": "string", "enum": ["economy", "business"], "default": "economy"}},
                      ["origin", "destination", "passengers"]),
                 ("Book a flight from {origin} to {destination} for {passengers}[ in {cabin}].",
                  "I need {passengers} seats from {origin} to {destination}[, {cabin} class]."),
                 {"origin": "{origin}", "destination": "{destination}", "passengers": "{passengers}", "cabin": "{cabin}"},
                 {"origin": CITIES, "destination": pool(["Berlin", "Lima", "Seoul"]), "passengers": NUMBERS,
                  "cabin": enum({"business": ["business"], "economy": ["economy"]})}),
    ToolFunction("find_hotel", "Search hotels",
                 _obj({"city": {"type": "string"}, "nights": {"type": "integer", "minimum": 1},
                       "guest": _obj({"name": {"type": "string"}, "adults": {"type": "integer"}}, ["name"])},
                      ["city", "nights"]),
                 ("Find a hotel in {city} for {nights} nights[ for {guest_name}].",),
                 {"city": "{city}", "nights": "{nights}", "guest": {"name": "{guest_name}"}},
                 {"city": CITIES, "nights": NUMBERS, "guest_name": pool(["Ana Silva", "Wei Chen"])}),
    ToolFunction("translate_text", "Translate text into a language",
                 _obj({"text": {"type": "string"}, "language": {"type": "string", "enum": ["fr", "de", "ja", "es"]}},
                      ["text", "language"]),
                 ("Translate \"{text}\" into {language}.", "How do you say \"{text}\" in {language}?"),
                 {"text": "{text}", "language": "{language}"},
                 {"text": pool(["good morning", "where is the station"]),
                  "language": enum({"fr": ["French"], "de": ["German"], "ja": ["Japanese"], "es": ["Spanish"]})}),
)
