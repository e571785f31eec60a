#!/usr/bin/env python3
"""Generate pctrain's example data sets (instruction data with pseudo-code).

Writes, relative to the repository root:

* ``examples/tulu-pc.jsonl``  - Tulu v2 shaped records (``id``, ``dataset``, ``messages``)
  with a ``pseudo_code`` field: a string (for the first user turn), a list with one entry
  (string or null) per user turn, or absent on purpose so the trainer's fallback is exercised.
* ``examples/alpaca-pc.jsonl`` - Alpaca shaped records (``instruction``, ``input``,
  ``output``) with a ``pseudo_code`` field (absent on two records).

Everything comes from the hand-written building blocks below: topics with a few factual
sentences (and tips) each, a few hand-written French / Spanish / German translations, and
constraint transformers (casing, bullets, numbering, sections, JSON, titles, closing phrases,
quotes, postscripts, word and sentence limits). Each assistant response is then checked
against every constraint of its instruction, and every pseudo-code block is parsed with
``ast``; any violation aborts with a non-zero exit status and nothing is written.

Run from anywhere (Python 3.11, standard library only, no network):

    python3 scripts/make_examples.py

The output is byte-identical across runs (fixed order, seeded ``random.Random``).
"""

from __future__ import annotations

import ast
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "examples"
TULU_PATH = OUT_DIR / "tulu-pc.jsonl"
ALPACA_PATH = OUT_DIR / "alpaca-pc.jsonl"
DATASET = "pctrain-examples"
SEED = 20250312
MAX_FILE_BYTES = 400 * 1024

# ---------------------------------------------------------------------------
# Building blocks: topics
# ---------------------------------------------------------------------------


def topic(slug, name, domain, title, questions, facts, keywords, avoid, tips=None, tip_goal=None):
    return {
        "slug": slug,
        "name": name,
        "domain": domain,
        "title": title,
        "questions": questions,
        "facts": facts,
        "keywords": keywords,
        "avoid": avoid,
        "tips": tips,
        "tip_goal": tip_goal,
    }


TOPICS = [
    topic(
        "photosynthesis", "photosynthesis", "science", "How Plants Make Food",
        ["How does photosynthesis work?", "What is photosynthesis and why does it matter?"],
        [
            "Photosynthesis is the process plants use to turn light energy into chemical energy stored in sugar.",
            "Photosynthesis takes place mainly in chloroplasts, which contain the green pigment chlorophyll.",
            "Plants take in carbon dioxide from the air and water from the soil.",
            "Using energy from sunlight, plants combine carbon dioxide and water to make glucose.",
            "Oxygen is released as a by-product, which is why forests help keep the air breathable.",
            "Almost every food chain on Earth depends on photosynthesis.",
        ],
        ["chlorophyll", "glucose", "oxygen"], ["soil", "forest"],
    ),
    topic(
        "black_holes", "black holes", "science", "Where Light Cannot Escape",
        ["What is a black hole?", "What do we know about black holes?"],
        [
            "A black hole is a region of space where gravity is so strong that not even light can escape.",
            "Most black holes form when a very massive star collapses at the end of its life.",
            "The boundary around a black hole is called the event horizon.",
            "Supermassive black holes with millions of times the mass of the Sun sit at the centers of most large galaxies.",
            "In 2019 the Event Horizon Telescope released the first image of a black hole's shadow.",
            "Black holes can be detected by their effect on nearby stars and gas.",
        ],
        ["gravity", "event horizon", "galaxies"], ["star", "telescope"],
    ),
    topic(
        "volcanoes", "volcanoes", "science", "Mountains of Fire",
        ["What is a volcano and where are volcanoes found?", "How do volcanoes work?"],
        [
            "A volcano is an opening in the Earth's crust through which molten rock, ash and gases escape.",
            "Molten rock is called magma underground and lava once it reaches the surface.",
            "Most volcanoes are found along the edges of tectonic plates, especially around the Pacific Ring of Fire.",
            "Some eruptions are explosive, while others release slow rivers of lava.",
            "Volcanic ash can disrupt air travel because it damages jet engines.",
            "Over time, volcanic soil often becomes very fertile and good for farming.",
        ],
        ["magma", "lava", "tectonic"], ["soil", "engine"],
    ),
    topic(
        "water_cycle", "the water cycle", "science", "The Endless Journey of Water",
        ["How does the water cycle work?", "Can you explain the water cycle?"],
        [
            "The water cycle describes how water moves continuously between the oceans, the air and the land.",
            "Heat from the Sun causes water to evaporate from seas, lakes and rivers.",
            "As the water vapor rises and cools, it condenses into tiny droplets that form clouds.",
            "When cloud droplets grow heavy enough, they fall as rain, snow or hail.",
            "Some rain and meltwater soaks into the ground and becomes groundwater.",
            "Rivers eventually carry much of the water back to the sea, and the cycle begins again.",
        ],
        ["evaporate", "clouds", "groundwater"], ["rain", "sea"],
    ),
    topic(
        "dna", "DNA", "science", "The Code of Life",
        ["What is DNA?", "How does DNA store genetic information?"],
        [
            "DNA is the molecule that carries the genetic instructions of almost all living things.",
            "The DNA molecule is shaped like a double helix, a ladder twisted into a spiral.",
            "Each rung of the ladder is a pair of bases, built from adenine, thymine, guanine and cytosine.",
            "A stretch of DNA that codes for a protein is called a gene.",
            "Before a cell divides, it copies its DNA so that each new cell gets a full set.",
            "The human genome contains roughly three billion base pairs.",
        ],
        ["double helix", "gene", "genome"], ["cell", "protein"],
    ),
    topic(
        "vaccines", "how vaccines work", "health", "Training the Body's Defenses",
        ["How do vaccines work?", "Why do vaccines protect us from disease?"],
        [
            "Vaccines train the immune system to recognize a germ without causing the illness itself.",
            "Many vaccines contain a weakened or inactivated virus, or just a harmless piece of it.",
            "After vaccination, the body produces antibodies and memory cells.",
            "If the real germ appears later, the immune system can respond much faster.",
            "When enough people are immune, a disease spreads more slowly, which protects those who cannot be vaccinated.",
            "Smallpox was declared eradicated in 1980 after a global vaccination campaign.",
        ],
        ["antibodies", "immune system", "smallpox"], ["virus", "disease"],
    ),
    topic(
        "sleep", "sleep", "health", "Why We Need Sleep",
        ["Why is sleep important?", "What happens in the body while we sleep?"],
        [
            "Most adults need between seven and nine hours of sleep each night.",
            "During sleep the brain cycles through light sleep, deep sleep and REM sleep several times.",
            "Deep sleep helps the body repair tissues and strengthen the immune system.",
            "REM sleep is the stage in which most vivid dreaming happens.",
            "Regular sleep and wake times help keep the body's internal clock stable.",
            "Bright screens late in the evening can make it harder to fall asleep.",
        ],
        ["REM", "brain", "deep sleep"], ["brain", "screen"],
        tips=[
            "Go to bed and get up at the same time every day, even on weekends.",
            "Keep your bedroom cool, dark and quiet.",
            "Avoid caffeine in the late afternoon and evening.",
            "Put screens away at least 30 minutes before bed.",
            "Get some daylight and physical activity during the day.",
        ],
        tip_goal="sleeping better",
    ),
    topic(
        "honeybees", "honeybees", "science", "Life in the Hive",
        ["How do honeybees live and work together?", "What do honeybees do?"],
        [
            "A honeybee colony can contain tens of thousands of workers but usually only one queen.",
            "Worker bees collect nectar and pollen from flowers.",
            "Bees turn nectar into honey by adding enzymes and fanning it with their wings to evaporate water.",
            "Foragers share the location of food with a waggle dance inside the hive.",
            "By carrying pollen between flowers, bees pollinate many of the crops people eat.",
            "A worker bee lives only about five to six weeks in the busy summer season.",
        ],
        ["nectar", "pollen", "waggle dance"], ["honey", "flower"],
    ),
    topic(
        "coral_reefs", "coral reefs", "environment", "Cities Under the Sea",
        ["What are coral reefs and why are they important?", "Why do coral reefs matter?"],
        [
            "Coral reefs are built by tiny animals called polyps that produce hard skeletons of calcium carbonate.",
            "Many reef-building corals get most of their food from algae that live inside their tissues.",
            "Reefs cover less than one percent of the ocean floor but are home to about a quarter of all marine species.",
            "When the water becomes too warm, corals expel their algae and turn white, which is called bleaching.",
            "Australia's Great Barrier Reef is the largest reef system in the world.",
            "Healthy reefs also protect coastlines by breaking the force of waves.",
        ],
        ["polyps", "algae", "bleaching"], ["ocean", "waves"],
    ),
    topic(
        "tides", "ocean tides", "science", "The Pull of the Moon",
        ["What causes the tides?", "Why does the sea rise and fall along the shore?"],
        [
            "Tides are the regular rise and fall of sea level along the coast.",
            "Tides are caused mainly by the gravitational pull of the Moon, with a smaller contribution from the Sun.",
            "Most coastlines experience two high tides and two low tides roughly every day.",
            "Spring tides, with the largest range, happen around new moon and full moon.",
            "Neap tides, with the smallest range, occur when the Sun and Moon pull at right angles.",
            "The Bay of Fundy in Canada has some of the highest tides in the world.",
        ],
        ["gravitational", "spring tides", "Moon"], ["range", "Canada"],
    ),
    topic(
        "solar_panels", "solar panels", "technology", "Power from Sunlight",
        ["How do solar panels work?", "How do solar panels make electricity?"],
        [
            "Solar panels turn sunlight directly into electricity using photovoltaic cells.",
            "Most cells are made of silicon, a material that releases electrons when struck by light.",
            "Solar panels produce direct current, which an inverter converts into alternating current for the home.",
            "Typical panels convert around 20 percent of the sunlight that hits them into electricity.",
            "Solar panels still work on cloudy days, although their output is lower.",
            "Many panels are guaranteed to keep most of their power for 25 years.",
        ],
        ["photovoltaic", "silicon", "inverter"], ["current", "cloudy"],
    ),
    topic(
        "ev_batteries", "electric car batteries", "technology", "Inside an Electric Car Battery",
        ["How do electric car batteries work?", "What should I know about electric car batteries?"],
        [
            "Most electric cars use lithium-ion batteries, similar to those in phones but much larger.",
            "A battery pack is made of thousands of small cells or a smaller number of larger ones.",
            "The range of a car depends on the battery capacity, measured in kilowatt-hours.",
            "Fast chargers can refill a large part of the battery in around half an hour.",
            "Cold weather reduces range because the chemical reactions inside the cells slow down.",
            "Old car batteries can be reused for home energy storage or recycled for their metals.",
        ],
        ["lithium-ion", "kilowatt-hours", "range"], ["weather", "charger"],
    ),
    topic(
        "internet_routing", "how data travels across the internet", "technology", "A Packet's Journey",
        ["How does data travel across the internet?", "What happens when I send a message over the internet?"],
        [
            "Data sent over the internet is split into small chunks called packets.",
            "Each packet carries the address of its destination, known as an IP address.",
            "Routers pass packets from network to network until they reach their destination.",
            "Packets from the same message may travel along different paths and arrive out of order.",
            "TCP puts the packets back in the correct order and asks for any missing ones to be resent.",
            "The Domain Name System translates names like example.com into IP addresses.",
        ],
        ["packets", "routers", "TCP"], ["network", "message"],
    ),
    topic(
        "recursion", "recursion in programming", "programming", "Functions That Call Themselves",
        ["What is recursion in programming?", "How does recursion work?"],
        [
            "Recursion is when a function solves a problem by calling itself on a smaller version of the same problem.",
            "Every recursive function needs a base case that stops the calls.",
            "Without a base case, the calls never end and the program eventually runs out of stack space.",
            "Computing a factorial is a classic example: the factorial of n is n times the factorial of n minus one.",
            "Recursion is a natural fit for tree structures such as folders and subfolders.",
            "Many recursive algorithms can also be rewritten as loops.",
        ],
        ["base case", "stack", "factorial"], ["loop", "tree"],
    ),
    topic(
        "git", "Git version control", "programming", "Keeping Track of Code",
        ["What is Git and why do developers use it?", "How does Git version control work?"],
        [
            "Git is a version control system that records the history of changes to a set of files.",
            "Each snapshot of the project is saved as a commit with a message describing the change.",
            "Branches let you work on a new feature without disturbing the main line of development.",
            "A merge combines the work from two branches into one.",
            "Every clone of a repository contains the full history, so you can work offline.",
            "Git was created by Linus Torvalds in 2005 to manage the development of the Linux kernel.",
        ],
        ["commit", "branches", "repository"], ["merge", "offline"],
        tips=[
            "Commit small, focused changes with clear messages.",
            "Pull the latest changes before you start new work.",
            "Create a separate branch for each feature or bug fix.",
            "Review the output of git diff before every commit.",
            "Never commit passwords or other secrets to the repository.",
        ],
        tip_goal="using Git effectively",
    ),
    topic(
        "hash_tables", "hash tables", "programming", "Fast Lookups with Hashing",
        ["What is a hash table?", "How do hash tables find values so quickly?"],
        [
            "A hash table stores values under keys so that they can be found quickly.",
            "A hash function turns each key into an index in an underlying array.",
            "When two keys land on the same index, it is called a collision.",
            "Collisions are handled by chaining entries in a list or by probing for another free slot.",
            "On average, looking up, inserting and deleting an entry takes constant time.",
            "Python dictionaries and Java HashMaps are both built on hash tables.",
        ],
        ["hash function", "collision", "constant time"], ["array", "list"],
    ),
    topic(
        "unit_testing", "unit testing", "programming", "Small Tests, Big Confidence",
        ["What is unit testing?", "Why should I write unit tests?"],
        [
            "A unit test checks that a small piece of code, such as a single function, behaves as expected.",
            "Good unit tests are fast, independent and repeatable.",
            "Each test usually arranges some input, runs the code and asserts on the result.",
            "Running tests after every change catches regressions early.",
            "Test-driven development means writing a failing test before writing the code that makes it pass.",
            "Mocks and stubs can stand in for slow or external dependencies such as databases.",
        ],
        ["regressions", "mocks", "independent"], ["database", "change"],
        tips=[
            "Test one behavior per test and give it a descriptive name.",
            "Keep tests independent so they can run in any order.",
            "Cover edge cases such as empty inputs and boundary values.",
            "Run the whole test suite automatically on every commit.",
            "Replace network calls and databases with fakes so tests stay fast.",
        ],
        tip_goal="writing good unit tests",
    ),
    topic(
        "compound_interest", "compound interest", "finance", "Interest on Interest",
        ["What is compound interest?", "How does compound interest make savings grow?"],
        [
            "Compound interest means earning interest not only on your original deposit but also on the interest already earned.",
            "The more often interest is added, the faster the balance grows.",
            "At 5 percent a year, money roughly doubles in about 14 years.",
            "The rule of 72 estimates doubling time by dividing 72 by the annual interest rate.",
            "Starting to save early matters because compounding has more years to work.",
            "Compounding also works against borrowers who carry credit card debt.",
        ],
        ["rule of 72", "balance", "debt"], ["credit", "borrower"],
    ),
    topic(
        "index_funds", "index funds", "finance", "Owning the Whole Market",
        ["What is an index fund?", "Why do many people invest in index funds?"],
        [
            "An index fund is an investment fund that tracks a market index such as the S&P 500.",
            "Instead of picking individual stocks, an index fund holds all or most of the companies in its index.",
            "Because little active management is needed, index funds usually have low fees.",
            "Over long periods, most actively managed funds fail to beat their benchmark index after fees.",
            "Owning many companies at once spreads risk, which is known as diversification.",
            "Index funds are popular for long-term goals such as retirement savings.",
        ],
        ["fees", "diversification", "benchmark"], ["stock", "retirement"],
    ),
    topic(
        "budgeting", "personal budgeting", "finance", "Making Every Dollar Count",
        ["How do I make a personal budget?", "What is a budget and how does it help?"],
        [
            "A budget is a plan that matches your income to your spending and saving.",
            "The 50/30/20 rule suggests 50 percent for needs, 30 percent for wants and 20 percent for savings.",
            "Tracking every expense for a month shows where money actually goes.",
            "An emergency fund covering three to six months of expenses protects against surprises.",
            "Automatic transfers on payday make saving easier to stick to.",
            "Reviewing the budget regularly keeps it realistic as life changes.",
        ],
        ["emergency fund", "income", "expense"], ["payday", "savings"],
        tips=[
            "Write down every expense for one month before you set any limits.",
            "Pay yourself first by moving money into savings on payday.",
            "Build an emergency fund before investing.",
            "Cancel subscriptions you have not used in the last month.",
            "Plan ahead for irregular costs such as gifts and car repairs.",
        ],
        tip_goal="sticking to a budget",
    ),
    topic(
        "inflation", "inflation", "finance", "Why Prices Rise",
        ["What is inflation?", "What should I know about inflation?"],
        [
            "Inflation is the general rise in prices over time, which reduces what a unit of money can buy.",
            "Inflation is usually measured with a consumer price index that tracks a basket of common goods and services.",
            "Many central banks aim to keep inflation at around 2 percent a year.",
            "To cool inflation, a central bank can raise interest rates, making borrowing more expensive.",
            "Very high inflation, called hyperinflation, can quickly wipe out people's savings.",
            "Moderate inflation encourages spending and investment rather than hoarding cash.",
        ],
        ["central bank", "interest rates", "consumer price index"], ["cash", "savings"],
    ),
    topic(
        "sourdough", "sourdough bread", "cooking", "The Slow Magic of Sourdough",
        ["How is sourdough bread made?", "What makes sourdough bread different?"],
        [
            "Sourdough bread is leavened by a starter, a mix of flour and water full of wild yeast and bacteria.",
            "Lactic acid bacteria in the starter give the bread its tangy flavor.",
            "A starter must be fed regularly with fresh flour and water to stay active.",
            "The dough usually rises slowly over many hours, which develops flavor.",
            "Baking in a hot covered pot traps steam and helps form a crisp crust.",
            "Sourdough keeps fresh longer than many breads made with commercial yeast.",
        ],
        ["starter", "crust", "bacteria"], ["steam", "pot"],
        tips=[
            "Feed your starter a few hours before mixing so it is at its most active.",
            "Weigh your ingredients instead of using cups.",
            "Let the dough rise until it has grown noticeably and looks airy.",
            "Preheat the oven and the pot thoroughly before baking.",
            "Wait at least an hour before slicing so the crumb can set.",
        ],
        tip_goal="baking sourdough bread",
    ),
    topic(
        "risotto", "risotto", "cooking", "The Art of Stirring",
        ["How do you make risotto?", "What is risotto?"],
        [
            "Risotto is a creamy Italian rice dish from the north of Italy.",
            "Risotto is made with short-grain rice such as Arborio or Carnaroli, which releases starch as it cooks.",
            "The rice is first toasted briefly in butter or oil.",
            "Hot stock is added a ladle at a time while the rice is stirred.",
            "At the end, butter and grated Parmesan are stirred in, a step Italians call mantecatura.",
            "A classic risotto takes about 18 to 20 minutes of cooking.",
        ],
        ["Arborio", "starch", "Parmesan"], ["butter", "ladle"],
        tips=[
            "Keep the stock hot in a separate pot.",
            "Toast the rice until the grains turn slightly translucent at the edges.",
            "Add the stock gradually and stir often.",
            "Stop cooking while the rice is still slightly firm in the center.",
            "Let it rest for a minute after adding the butter and cheese.",
        ],
        tip_goal="making a creamy risotto",
    ),
    topic(
        "coffee", "brewing coffee", "cooking", "A Better Cup",
        ["How do I brew good coffee at home?", "What matters most when brewing coffee?"],
        [
            "Good coffee starts with freshly roasted beans ground just before brewing.",
            "The grind size should match the method: fine for espresso and coarse for a French press.",
            "Water just off the boil, around 90 to 96 degrees Celsius, extracts the best flavors.",
            "A common starting ratio is about 60 grams of coffee per liter of water.",
            "Under-extracted coffee tastes sour, while over-extracted coffee tastes bitter.",
            "Espresso is brewed by forcing hot water through finely ground coffee under pressure.",
        ],
        ["grind", "espresso", "ratio"], ["bitter", "pressure"],
        tips=[
            "Buy whole beans and grind them right before brewing.",
            "Use a kitchen scale to measure coffee and water.",
            "Use filtered water if your tap water tastes strong.",
            "Rinse paper filters with hot water before brewing.",
            "Adjust the grind finer if the coffee tastes sour and coarser if it tastes bitter.",
        ],
        tip_goal="brewing better coffee",
    ),
    topic(
        "kyoto", "Kyoto", "travel", "Kyoto, the Old Capital",
        ["What should I know before visiting Kyoto?", "Why is Kyoto worth visiting?"],
        [
            "Kyoto was the capital of Japan for more than a thousand years.",
            "Kyoto has around 1,600 Buddhist temples and hundreds of Shinto shrines.",
            "Fushimi Inari Shrine is famous for its long tunnels of orange torii gates.",
            "Spring cherry blossoms and autumn leaves are the most popular seasons to visit.",
            "Gion is the historic district where geiko and maiko still perform.",
            "Kyoto is about two and a quarter hours from Tokyo by bullet train.",
        ],
        ["temples", "torii", "Gion"], ["train", "Tokyo"],
        tips=[
            "Visit popular temples early in the morning to avoid crowds.",
            "Buy a prepaid IC card for buses and trains.",
            "Carry some cash because small shops may not take cards.",
            "Book hotels for the cherry blossom season well in advance.",
            "Remove your shoes when asked before entering temples and traditional inns.",
        ],
        tip_goal="visiting Kyoto",
    ),
    topic(
        "iceland", "Iceland", "travel", "Land of Fire and Ice",
        ["What is Iceland like as a travel destination?", "What should I know about Iceland before I go?"],
        [
            "Iceland sits on the Mid-Atlantic Ridge, where the North American and Eurasian plates pull apart.",
            "Geothermal energy heats most homes in the country.",
            "The Ring Road circles the island and is about 1,300 kilometers long.",
            "In summer the sun barely sets, while winter nights are long and good for seeing the northern lights.",
            "Glaciers cover roughly a tenth of the land.",
            "Reykjavik is the world's northernmost capital of a sovereign state.",
        ],
        ["geothermal", "Ring Road", "glaciers"], ["winter", "capital"],
        tips=[
            "Check road and weather conditions every morning before driving.",
            "Pack waterproof layers because the weather changes quickly.",
            "Never walk on a glacier without a certified guide.",
            "Fill up the fuel tank whenever you can in remote areas.",
            "Keep a safe distance from the waves on black sand beaches.",
        ],
        tip_goal="a road trip around Iceland",
    ),
    topic(
        "jet_lag", "jet lag", "travel", "Resetting Your Body Clock",
        ["What causes jet lag?", "Why do long flights leave us so tired?"],
        [
            "Jet lag happens when the body's internal clock is out of step with the local time.",
            "Jet lag is usually worse when flying east than when flying west.",
            "A rough rule is that the body adjusts by about one time zone per day.",
            "Morning daylight at the destination helps reset the internal clock.",
            "Staying hydrated and limiting alcohol on the plane can reduce tiredness.",
            "Short naps of under 30 minutes can help without disturbing night sleep.",
        ],
        ["internal clock", "time zone", "daylight"], ["alcohol", "plane"],
        tips=[
            "Start shifting your bedtime a few days before you leave.",
            "Drink water regularly during the flight.",
            "Get outside in daylight soon after you arrive.",
            "Eat meals at local times from the first day.",
            "Keep naps short until you have adjusted.",
        ],
        tip_goal="beating jet lag",
    ),
    topic(
        "aqueducts", "Roman aqueducts", "history", "Rivers Built by Rome",
        ["How did Roman aqueducts work?", "Why were Roman aqueducts so important?"],
        [
            "Roman aqueducts carried fresh water from distant springs into cities.",
            "Aqueducts relied on gravity alone, with a very slight downward slope along their whole length.",
            "Most of an aqueduct's route ran underground in channels, not on tall arches.",
            "The city of Rome was eventually supplied by eleven aqueducts.",
            "The Pont du Gard in southern France is one of the best preserved aqueduct bridges.",
            "Aqueduct water fed public fountains, baths and the homes of the wealthy.",
        ],
        ["gravity", "arches", "Pont du Gard"], ["baths", "bridge"],
    ),
    topic(
        "printing_press", "the printing press", "history", "The Machine That Spread Ideas",
        ["Why was the printing press so important?", "Who invented the printing press and what did it change?"],
        [
            "Johannes Gutenberg developed a printing press with movable metal type in Mainz around 1450.",
            "Gutenberg's system made it possible to produce books far faster than copying them by hand.",
            "The Gutenberg Bible, printed in the 1450s, is one of the first major books made this way.",
            "Printing spread quickly, and by 1500 presses were working in more than 200 European towns.",
            "Cheaper books helped spread literacy and new ideas during the Renaissance and Reformation.",
            "Movable type had been invented earlier in China, but Gutenberg's metal type and press were new in Europe.",
        ],
        ["movable type", "Gutenberg", "literacy"], ["Bible", "China"],
    ),
    topic(
        "silk_road", "the Silk Road", "history", "Roads of Silk and Ideas",
        ["What was the Silk Road?", "Why was the Silk Road important in history?"],
        [
            "The Silk Road was a network of trade routes linking China with Central Asia, the Middle East and Europe.",
            "The Silk Road flourished for centuries, beginning around the time of the Han dynasty.",
            "Merchants traded silk, spices, paper, glass and precious metals along the way.",
            "Few traders traveled the whole distance; goods usually passed through many hands.",
            "Ideas, religions and technologies such as papermaking spread along the same routes.",
            "Caravan cities such as Samarkand grew rich from Silk Road trade.",
        ],
        ["merchants", "Samarkand", "Han dynasty"], ["spice", "paper"],
    ),
    topic(
        "apollo11", "the Apollo 11 mission", "history", "One Giant Leap",
        ["What happened during the Apollo 11 mission?", "Why was Apollo 11 historic?"],
        [
            "Apollo 11 was the first crewed mission to land on the Moon.",
            "Apollo 11 launched on 16 July 1969 on a Saturn V rocket.",
            "Neil Armstrong and Buzz Aldrin landed in the lunar module Eagle on 20 July 1969.",
            "Michael Collins stayed in orbit aboard the command module Columbia.",
            "The astronauts collected about 21.5 kilograms of lunar rock and soil.",
            "The crew returned safely with a splashdown in the Pacific Ocean on 24 July 1969.",
        ],
        ["Armstrong", "Saturn V", "lunar module"], ["rocket", "orbit"],
    ),
    topic(
        "olympics", "the Olympic Games", "sport", "From Olympia to the World",
        ["What is the history of the Olympic Games?", "How did the Olympic Games begin and how have they changed?"],
        [
            "The ancient Olympic Games were held at Olympia in Greece from 776 BC.",
            "The modern Olympics were revived in Athens in 1896, largely thanks to Pierre de Coubertin.",
            "The five interlocking rings represent the union of the five inhabited continents.",
            "The Summer and Winter Games have been held in different years since 1994.",
            "The Olympic flame is lit in Olympia and carried to the host city in a torch relay.",
            "The motto is Faster, Higher, Stronger, with Together added in 2021.",
        ],
        ["Olympia", "torch relay", "rings"], ["Athens", "motto"],
    ),
    topic(
        "marathon", "marathon training", "sport", "The Road to 42 Kilometers",
        ["How should I train for a marathon?", "What are the basics of marathon training?"],
        [
            "A marathon is 42.195 kilometers long.",
            "Most training plans last 16 to 20 weeks and build mileage gradually.",
            "The weekly long run is the key session for building endurance.",
            "Many coaches suggest increasing weekly distance by no more than about 10 percent.",
            "Tapering, or reducing training in the final two to three weeks, helps the body arrive rested.",
            "During the race, runners take in carbohydrates to avoid hitting the wall.",
        ],
        ["endurance", "tapering", "long run"], ["weeks", "race"],
        tips=[
            "Run most of your miles at an easy, conversational pace.",
            "Practice your race-day drinks and gels during long runs.",
            "Replace your running shoes before they are badly worn.",
            "Schedule at least one full rest day each week.",
            "Start the race slower than you think you need to.",
        ],
        tip_goal="training for a first marathon",
    ),
    topic(
        "offside", "the offside rule in soccer", "sport", "Offside, Explained",
        ["What is the offside rule in soccer?", "How does offside work in soccer?"],
        [
            "A player is in an offside position if they are in the opponents' half and nearer to the goal line than both the ball and the second-last opponent.",
            "Being in an offside position is not an offense by itself.",
            "A player is penalized only if they become involved in active play when the ball is played by a teammate.",
            "There is no offside offense directly from a goal kick, a throw-in or a corner kick.",
            "The opposing team restarts play with an indirect free kick.",
            "Video assistant referees now help check tight offside decisions.",
        ],
        ["second-last opponent", "indirect free kick", "teammate"], ["referee", "corner"],
    ),
    topic(
        "basketball", "the history of basketball", "sport", "From Peach Baskets to Pro Leagues",
        ["How did basketball begin?", "What is the history of basketball?"],
        [
            "Basketball was invented in 1891 by James Naismith, a physical education teacher in Springfield, Massachusetts.",
            "The first games used peach baskets as hoops, and the ball had to be retrieved after each score.",
            "The first game was played with nine players on each side.",
            "The NBA was formed in 1949 through the merger of two professional leagues.",
            "The three-point line was added to the NBA in the 1979-80 season.",
            "Basketball became an official Olympic sport at the 1936 Berlin Games.",
        ],
        ["Naismith", "peach baskets", "three-point line"], ["NBA", "Olympic"],
    ),
    topic(
        "chess_openings", "chess openings", "sport", "The First Moves",
        ["What makes a good chess opening?", "How should a beginner approach chess openings?"],
        [
            "The opening is the first phase of a chess game, usually the first ten to fifteen moves.",
            "Good openings aim to control the center, develop pieces and keep the king safe.",
            "Castling moves the king to safety and brings a rook toward the center.",
            "The Italian Game and the Ruy Lopez both begin with 1.e4 e5 2.Nf3 Nc6.",
            "The Sicilian Defense, 1.e4 c5, is one of Black's most popular replies.",
            "Beginners learn more from understanding opening principles than from memorizing long lines.",
        ],
        ["castling", "center", "Sicilian"], ["king", "rook"],
        tips=[
            "Control the center with your pawns early.",
            "Develop your knights and bishops before moving the queen.",
            "Castle early to protect your king.",
            "Avoid moving the same piece twice in the opening without a good reason.",
            "Connect your rooks by clearing the back rank.",
        ],
        tip_goal="playing the opening in chess",
    ),
    topic(
        "hydration", "hydration", "health", "Water and Your Body",
        ["Why is staying hydrated important?", "What should I know about hydration?"],
        [
            "Water makes up roughly 60 percent of an adult's body weight.",
            "The body loses water through breathing, sweating and urine.",
            "Thirst is a useful signal, but older adults may feel it less strongly.",
            "Pale yellow urine is a simple sign of good hydration.",
            "During long exercise in heat, drinks with electrolytes can replace lost sodium.",
            "Fruits and vegetables such as cucumber and watermelon also supply water.",
        ],
        ["electrolytes", "thirst", "sodium"], ["urine", "exercise"],
        tips=[
            "Keep a refillable water bottle within reach.",
            "Drink a glass of water with every meal.",
            "Drink more in hot weather and during exercise.",
            "Eat water-rich foods such as fruit, soups and salads.",
            "Check the color of your urine as a quick guide.",
        ],
        tip_goal="staying hydrated",
    ),
    topic(
        "exercise", "regular exercise", "health", "Move More, Feel Better",
        ["Why is regular exercise good for you?", "What should I know about staying active?"],
        [
            "Regular physical activity lowers the risk of heart disease, type 2 diabetes and some cancers.",
            "Health guidelines recommend at least 150 minutes of moderate activity per week for adults.",
            "Muscle-strengthening exercise on two or more days a week is also advised.",
            "Exercise improves mood by releasing chemicals such as endorphins.",
            "Even short walks after meals can help control blood sugar.",
            "Building activity up gradually reduces the risk of injury.",
        ],
        ["endorphins", "150 minutes", "diabetes"], ["injury", "mood"],
        tips=[
            "Pick an activity you enjoy so you keep doing it.",
            "Schedule workouts like appointments.",
            "Start with short sessions and add time each week.",
            "Warm up for five to ten minutes before intense exercise.",
            "Include strength exercises for all major muscle groups twice a week.",
        ],
        tip_goal="exercising regularly",
    ),
    topic(
        "composting", "composting", "environment", "Turning Scraps into Soil",
        ["How does composting work?", "Why should I compost my kitchen scraps?"],
        [
            "Composting turns food scraps and garden waste into a dark, crumbly soil improver.",
            "Microbes break the material down, and they work best with air and moisture.",
            "A good mix combines nitrogen-rich greens such as vegetable peels with carbon-rich browns such as dry leaves.",
            "Turning the pile adds oxygen and speeds up decomposition.",
            "Meat and dairy are usually left out because they attract pests and smell.",
            "Finished compost improves soil structure and helps it hold water.",
        ],
        ["microbes", "greens", "decomposition"], ["pests", "leaves"],
        tips=[
            "Chop scraps into small pieces so they break down faster.",
            "Add roughly equal volumes of greens and browns.",
            "Keep the pile as damp as a wrung-out sponge.",
            "Turn the pile every week or two.",
            "Leave out meat, dairy and oily food.",
        ],
        tip_goal="composting at home",
    ),
    topic(
        "heart", "the human heart", "health", "The Body's Tireless Pump",
        ["How does the human heart work?", "What does the heart do?"],
        [
            "The heart is a muscular organ about the size of a fist.",
            "The heart has four chambers: two atria on top and two ventricles below.",
            "The right side of the heart pumps blood to the lungs, and the left side pumps it to the rest of the body.",
            "Valves between the chambers keep blood flowing in one direction.",
            "At rest, an adult heart usually beats 60 to 100 times a minute.",
            "Over a lifetime, the heart beats more than two billion times.",
        ],
        ["ventricles", "valves", "chambers"], ["lungs", "lifetime"],
    ),
]
TOPIC_BY_SLUG = {t["slug"]: t for t in TOPICS}
TIPS_TOPICS = [t for t in TOPICS if t["tips"]]

# Hand-written translations of facts[0], facts[1] and facts[2] of some topics.
TRANSLATIONS = {
    ("photosynthesis", "fr"): [
        "La photosynthèse est le processus par lequel les plantes transforment l'énergie lumineuse en énergie chimique stockée dans le sucre.",
        "La photosynthèse se déroule principalement dans les chloroplastes, qui contiennent un pigment vert appelé chlorophylle.",
        "Les plantes absorbent le dioxyde de carbone de l'air et l'eau du sol.",
    ],
    ("water_cycle", "fr"): [
        "Le cycle de l'eau décrit la façon dont l'eau circule sans cesse entre les océans, l'air et la terre.",
        "La chaleur du Soleil fait s'évaporer l'eau des mers, des lacs et des rivières.",
        "En s'élevant et en se refroidissant, la vapeur d'eau se condense en fines gouttelettes qui forment les nuages.",
    ],
    ("sourdough", "fr"): [
        "Le pain au levain lève grâce à un levain, un mélange de farine et d'eau riche en levures sauvages et en bactéries.",
        "Les bactéries lactiques donnent au pain son goût légèrement acidulé.",
        "Le levain doit être nourri régulièrement avec de la farine et de l'eau fraîches pour rester actif.",
    ],
    ("printing_press", "fr"): [
        "Vers 1450, à Mayence, Johannes Gutenberg a mis au point une presse à imprimer utilisant des caractères mobiles en métal.",
        "Le système de Gutenberg permettait de produire des livres bien plus vite qu'en les copiant à la main.",
        "La Bible de Gutenberg, imprimée dans les années 1450, est l'un des premiers grands livres fabriqués de cette manière.",
    ],
    ("heart", "fr"): [
        "Le cœur est un organe musculaire à peu près de la taille d'un poing.",
        "Le cœur possède quatre cavités : deux oreillettes en haut et deux ventricules en bas.",
        "Le côté droit du cœur envoie le sang vers les poumons, et le côté gauche l'envoie vers le reste du corps.",
    ],
    ("volcanoes", "es"): [
        "Un volcán es una abertura en la corteza terrestre por la que escapan roca fundida, ceniza y gases.",
        "La roca fundida se llama magma bajo tierra y lava cuando llega a la superficie.",
        "La mayoría de los volcanes se encuentran en los bordes de las placas tectónicas, sobre todo alrededor del Cinturón de Fuego del Pacífico.",
    ],
    ("kyoto", "es"): [
        "Kioto fue la capital de Japón durante más de mil años.",
        "Kioto tiene alrededor de 1600 templos budistas y cientos de santuarios sintoístas.",
        "El santuario Fushimi Inari es famoso por sus largos túneles de puertas torii de color naranja.",
    ],
    ("risotto", "es"): [
        "El risotto es un plato cremoso de arroz originario del norte de Italia.",
        "El risotto se prepara con arroz de grano corto, como el Arborio o el Carnaroli, que suelta almidón al cocinarse.",
        "Primero, el arroz se tuesta brevemente en mantequilla o aceite.",
    ],
    ("compound_interest", "es"): [
        "El interés compuesto consiste en ganar intereses no solo sobre el depósito original, sino también sobre los intereses ya obtenidos.",
        "Cuanto más a menudo se suman los intereses, más rápido crece el saldo.",
        "Con un 5 por ciento anual, el dinero se duplica en unos 14 años.",
    ],
    ("marathon", "es"): [
        "Un maratón mide 42,195 kilómetros.",
        "La mayoría de los planes de entrenamiento duran entre 16 y 20 semanas y aumentan el kilometraje de forma gradual.",
        "La tirada larga semanal es la sesión clave para desarrollar la resistencia.",
    ],
    ("black_holes", "de"): [
        "Ein Schwarzes Loch ist ein Bereich im Weltraum, in dem die Schwerkraft so stark ist, dass nicht einmal Licht entkommen kann.",
        "Die meisten Schwarzen Löcher entstehen, wenn ein sehr massereicher Stern am Ende seines Lebens kollabiert.",
        "Die Grenze um ein Schwarzes Loch wird Ereignishorizont genannt.",
    ],
    ("honeybees", "de"): [
        "Ein Honigbienenvolk kann Zehntausende Arbeiterinnen haben, aber meist nur eine Königin.",
        "Die Arbeiterinnen sammeln Nektar und Pollen von Blüten.",
        "Bienen verwandeln Nektar in Honig, indem sie Enzyme hinzufügen und mit ihren Flügeln Wasser verdunsten lassen.",
    ],
    ("git", "de"): [
        "Git ist ein Versionskontrollsystem, das die Geschichte der Änderungen an einer Gruppe von Dateien aufzeichnet.",
        "Jeder Stand des Projekts wird als Commit mit einer Nachricht gespeichert, die die Änderung beschreibt.",
        "Mit Branches kann man an einer neuen Funktion arbeiten, ohne die Hauptentwicklungslinie zu stören.",
    ],
    ("apollo11", "de"): [
        "Apollo 11 war die erste bemannte Mission, die auf dem Mond landete.",
        "Apollo 11 startete am 16. Juli 1969 mit einer Saturn-V-Rakete.",
        "Neil Armstrong und Buzz Aldrin landeten am 20. Juli 1969 mit der Mondlandefähre Eagle.",
    ],
    ("sleep", "de"): [
        "Die meisten Erwachsenen brauchen jede Nacht zwischen sieben und neun Stunden Schlaf.",
        "Im Schlaf durchläuft das Gehirn mehrmals leichten Schlaf, Tiefschlaf und REM-Schlaf.",
        "Tiefschlaf hilft dem Körper, Gewebe zu reparieren und das Immunsystem zu stärken.",
    ],
}
LANG_NAMES = {"fr": "French", "es": "Spanish", "de": "German"}

SYSTEM_PROMPTS = {
    "science": "You are a friendly science tutor for high-school students.",
    "technology": "You are a technology explainer who avoids unnecessary jargon.",
    "programming": "You are a patient programming mentor.",
    "finance": "You are a personal-finance educator. You give general information, not individual investment advice.",
    "cooking": "You are a helpful assistant for a home-cooking website. Keep answers practical.",
    "travel": "You are a travel assistant that gives accurate, concise information.",
    "history": "You are a history teacher who enjoys sharing surprising details.",
    "sport": "You are a sports journalist who explains rules and history clearly.",
    "health": "You are a health information assistant. You give general information, not medical diagnoses.",
    "environment": "You are an assistant for a community gardening and environment club.",
}

POSTSCRIPTS = {
    "science": "A good introductory textbook covers this topic in more depth.",
    "technology": "The manufacturer's documentation lists the exact figures for a specific model.",
    "programming": "The best way to learn this is to try it in a small project of your own.",
    "finance": "This is general information, not personal financial advice.",
    "cooking": "Do not worry if your first attempt is not perfect; practice makes it easier.",
    "travel": "Check local opening times before you go, as they can change by season.",
    "history": "Many museums have free online collections where you can explore this period.",
    "sport": "Watching a few games with this in mind makes them even more enjoyable.",
    "health": "For personal medical questions, please talk to a doctor.",
    "environment": "Small changes at home add up over time.",
}

CLOSING_PHRASES = [
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "Hope this helps!",
    "Any other questions?",
    "That is all you need to know.",
]

# ---------------------------------------------------------------------------
# Text utilities and constraint checks (the self-check)
# ---------------------------------------------------------------------------

STOPWORDS = {
    "fr": {"le", "la", "les", "de", "des", "du", "est", "et", "un", "une", "en", "qui", "dans", "par"},
    "es": {"el", "la", "los", "las", "de", "del", "es", "y", "un", "una", "en", "que", "por", "se", "al"},
    "de": {"der", "die", "das", "und", "ist", "ein", "eine", "mit", "im", "den", "dem", "wird", "von"},
}
ENGLISH_MARKERS = {"the", "and", "is", "are", "with", "which", "of", "this"}


def word_pattern(word: str) -> re.Pattern:
    """Whole-word, case-insensitive match that also accepts a plural -s / -es."""
    return re.compile(r"(?<![\w-])" + re.escape(word) + r"(?:s|es)?(?![\w-])", re.IGNORECASE)


def has_word(text: str, word: str) -> bool:
    return word_pattern(word).search(text) is not None


def count_words(text: str) -> int:
    return len(text.split())


def count_sentences(text: str) -> int:
    pieces = re.split(r"(?<=[.!?])[\"']?\s+", text.strip())
    return len([p for p in pieces if re.search(r"\w", p)])


def tokens(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def check(kind: str, arg, resp: str) -> str | None:
    """Returns None when `resp` satisfies the constraint, else a description of the failure."""
    if kind == "lowercase":
        return None if resp == resp.lower() and re.search(r"[a-z]", resp) else "not all lowercase"
    if kind == "uppercase":
        return None if resp == resp.upper() and re.search(r"[A-Z]", resp) else "not all uppercase"
    if kind == "max_words":
        n = count_words(resp)
        return None if n <= arg else f"{n} words > {arg}"
    if kind == "max_sentences":
        n = count_sentences(resp)
        return None if n <= arg else f"{n} sentences > {arg}"
    if kind == "bullets":
        lines = [ln for ln in resp.split("\n") if ln.startswith("* ")]
        other = [ln for ln in resp.split("\n") if re.match(r"^\s*[-+•]\s", ln)]
        return None if len(lines) == arg and not other else f"{len(lines)} bullets != {arg}"
    if kind == "numbered":
        nums = [int(m.group(1)) for m in re.finditer(r"^(\d+)\. \S", resp, re.M)]
        return None if nums == list(range(1, arg + 1)) else f"numbering {nums} != 1..{arg}"
    if kind == "json_keys":
        try:
            obj = json.loads(resp)
        except json.JSONDecodeError as e:
            return f"invalid JSON: {e}"
        if not isinstance(obj, dict):
            return "JSON is not an object"
        return None if sorted(obj) == sorted(arg) else f"keys {sorted(obj)} != {sorted(arg)}"
    if kind == "json_list_len":
        key, n = arg
        value = json.loads(resp).get(key)
        return None if isinstance(value, list) and len(value) == n else f"{key} is not a list of {n}"
    if kind == "title":
        return None if re.search(r"<<[^<>\n]+>>", resp) else "no <<title>>"
    if kind == "sections":
        marker, n = arg
        nums = [int(m.group(1)) for m in re.finditer(rf"^{re.escape(marker)} (\d+)$", resp, re.M)]
        return None if nums == list(range(1, n + 1)) else f"sections {nums} != 1..{n}"
    if kind == "language":
        words = tokens(resp)
        native = sum(1 for w in words if w in STOPWORDS[arg])
        english = sorted({w for w in words if w in ENGLISH_MARKERS})
        if native < 3 or english:
            return f"does not look like {LANG_NAMES[arg]} (native={native}, english={english})"
        return None
    if kind == "include":
        missing = [w for w in arg if not has_word(resp, w)]
        return None if not missing else f"missing keywords {missing}"
    if kind == "exclude":
        return None if not has_word(resp, arg) else f"uses forbidden word {arg!r}"
    if kind == "end_phrase":
        return None if resp.endswith(arg) else f"does not end with {arg!r}"
    if kind == "quotes":
        ok = len(resp) > 2 and resp.startswith('"') and resp.endswith('"')
        return None if ok else "not wrapped in double quotes"
    if kind == "postscript":
        return None if re.search(rf"^{re.escape(arg)} \S", resp, re.M) else f"no postscript {arg!r}"
    raise ValueError(f"unknown constraint kind {kind}")


def check_response(where: str, resp: str, constraints: list) -> None:
    if not resp.strip():
        raise SystemExit(f"self-check failed: {where}: empty response")
    if any("  " in line.strip() for line in resp.split("\n")):
        raise SystemExit(f"self-check failed: {where}: double space in response")
    for kind, arg in constraints:
        err = check(kind, arg, resp)
        if err:
            raise SystemExit(f"self-check failed: {where}: {kind}: {err}\n--- response ---\n{resp}")


def check_pseudo_code(where: str, pc: str) -> None:
    """The pseudo-code must follow the documented style closely enough to be parsed."""
    fail = lambda msg: SystemExit(f"pseudo-code check failed: {where}: {msg}\n--- pseudo-code ---\n{pc}")
    body, sep, call = pc.rpartition("\n\n>>> ")
    if not sep or "\n" in call:
        raise fail("must end with a single '>>> call(...)' line after a blank line")
    try:
        module = ast.parse(body)
        call_expr = ast.parse(call, mode="eval").body
    except SyntaxError as e:
        raise fail(f"does not parse: {e}")
    funcs = [n for n in module.body if isinstance(n, ast.FunctionDef)]
    if len(module.body) != 1 or len(funcs) != 1:
        raise fail("must define exactly one entry-point function")
    fn = funcs[0]
    if fn.returns is None or any(a.annotation is None for a in fn.args.args):
        raise fail("signature must be fully typed")
    doc = ast.get_docstring(fn) or ""
    if "Parameters:" not in doc or "Returns:" not in doc:
        raise fail("docstring must list Parameters and Returns")
    for a in fn.args.args:
        if f"{a.arg} (" not in doc:
            raise fail(f"parameter {a.arg} not documented")
    if not (isinstance(call_expr, ast.Call) and isinstance(call_expr.func, ast.Name)
            and call_expr.func.id == fn.name):
        raise fail("final line must call the entry-point function")
    if len(call_expr.args) + len(call_expr.keywords) != len(fn.args.args):
        raise fail("call must pass every parameter")
    names = {a.arg for a in fn.args.args}
    if any(k.arg not in names for k in call_expr.keywords):
        raise fail("call uses an unknown keyword")
    if "# " not in body:
        raise fail("no comments")
    starts = [node.lineno for node in ast.walk(fn) if isinstance(node, ast.stmt) and node is not fn]
    if len(starts) != len(set(starts)):
        raise fail("one step per line")
    for node in ast.walk(fn):
        if isinstance(node, (ast.If, ast.For, ast.While)) and node.body[0].lineno == node.lineno:
            raise fail("one step per line (block body on the same line)")
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp, ast.ClassDef)):
            raise fail("no one-liners or classes")


# ---------------------------------------------------------------------------
# Pseudo-code writer
# ---------------------------------------------------------------------------


def py_value(v) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(py_value(x) for x in v) + "]"
    raise TypeError(v)


def make_pc(fn_name, goal, params, steps, ret_type, ret_desc):
    """params: [(name, type, description, value)], steps: [(comment or None, code)]."""
    sig = ", ".join(f"{n}: {t}" for n, t, _, _ in params)
    lines = [f"def {fn_name}({sig}) -> {ret_type}:", f'    """{goal}', "    Parameters:"]
    for n, t, d, _ in params:
        lines.append(f"        {n} ({t}): {d}")
    lines += ["    Returns:", f"        {ret_type}: {ret_desc}", '    """']
    for comment, code in steps:
        if comment:
            lines.append(f"    # {comment}")
        for c in code.split("\n"):
            lines.append(f"    {c}")
    args = []
    for i, (n, _, _, v) in enumerate(params):
        args.append(py_value(v) if i == 0 else f"{n}={py_value(v)}")
    lines += ["", f">>> {fn_name}({', '.join(args)})"]
    return "\n".join(lines)


def slugify(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]+", "_", text.lower())).strip("_")


def human_join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def quoted_list(words: list[str]) -> str:
    return human_join([f'"{w}"' for w in words])


HELPERS = {
    "answer": ["generate_answer", "draft_answer", "write_explanation", "compose_reply"],
    "facts": ["gather_facts", "collect_key_facts", "recall_facts", "list_known_facts"],
    "tips": ["brainstorm_tips", "collect_practical_tips", "list_helpful_tips"],
    "trim_words": ["trim_to_word_limit", "keep_sentences_within_words", "truncate_at_sentence"],
    "trim_sents": ["keep_first_sentences", "limit_sentences", "truncate_to_sentences"],
    "avoid": ["rephrase_without", "remove_word", "avoid_word"],
    "ensure": ["ensure_contains", "work_in_keyword", "add_keyword_naturally"],
    "drop": ["drop_items_containing", "remove_items_with_word", "filter_out_word"],
    "prio": ["prioritize_items_with", "move_matches_first", "rank_by_keywords"],
    "title": ["make_title", "write_title", "suggest_title"],
    "ps": ["write_postscript", "compose_postscript"],
    "lower": ["to_lowercase", "lowercase"],
    "upper": ["to_uppercase", "uppercase"],
    "items_words": ["keep_items_within_word_limit", "fit_items_to_word_budget"],
    "items_sents": ["keep_first_items", "limit_item_count"],
    "join": ["join_sentences", "write_paragraph", "combine_into_paragraph"],
    "split": ["split_evenly", "divide_into_groups"],
}
LOWER_PARAM = ["all_lowercase", "lowercase_only", "use_lowercase"]
UPPER_PARAM = ["all_caps", "uppercase_only", "use_capitals"]
QUOTE_PARAM = ["wrap_in_quotes", "quote_response"]
TITLE_PARAM = ["with_title", "add_title"]
PS_PARAM = ["add_postscript", "with_postscript"]
FN_VERBS = {
    "paragraph": ["explain", "describe", "answer_question_about", "write_short_answer_on", "summarize"],
    "bullets": ["list_key_facts_about", "bullet_points_on", "summarize_in_bullets"],
    "bullets_tips": ["give_tips_for", "list_tips_for", "suggest_tips_for"],
    "numbered": ["numbered_facts_about", "list_numbered_facts_on", "enumerate_facts_about"],
    "numbered_tips": ["numbered_tips_for", "rank_tips_for", "step_by_step_tips_for"],
    "json": ["describe_as_json", "build_json_summary_of", "json_overview_of"],
    "sections": ["write_sectioned_article_on", "write_explainer_on", "write_sections_about"],
}

# ---------------------------------------------------------------------------
# JSON templates
# ---------------------------------------------------------------------------

JSON_KINDS = {
    "A": {"keys": ["topic", "summary", "key_facts"], "list_key": "key_facts"},
    "B": {"keys": ["title", "points"], "list_key": "points"},
    "C": {"keys": ["subject", "category", "facts"], "list_key": "facts"},
    "D": {"keys": ["question", "answer"], "list_key": None},
    "E": {"keys": ["name", "description", "related_terms"], "list_key": "related_terms"},
    "F": {"keys": ["goal", "tips"], "list_key": "tips"},
}


def json_object(spec, items):
    t, kind = spec["topic"], spec["json_kind"]
    if kind == "A":
        return {"topic": t["name"], "summary": items[0], "key_facts": items[1:]}
    if kind == "B":
        return {"title": t["title"], "points": items}
    if kind == "C":
        return {"subject": t["name"], "category": t["domain"], "facts": items}
    if kind == "D":
        return {"question": spec["question"], "answer": " ".join(items)}
    if kind == "E":
        return {"name": t["name"], "description": " ".join(items), "related_terms": t["keywords"]}
    if kind == "F":
        return {"goal": t["tip_goal"], "tips": items}
    raise ValueError(kind)


def json_instruction(spec, rng):
    kind, c = spec["json_kind"], spec["count"]
    desc = {
        "A": f'"topic" (the subject), "summary" (one sentence) and "key_facts" (a list of {c} facts)',
        "B": f'"title" (a short title) and "points" (a list of {c} points)',
        "C": f'"subject", "category" (the field it belongs to) and "facts" (a list of {c} facts)',
        "D": '"question" (my question, repeated) and "answer" (your answer as a short paragraph)',
        "E": f'"name", "description" ({c} sentences) and "related_terms" (a list of three key terms)',
        "F": f'"goal" and "tips" (a list of {c} tips)',
    }[kind]
    return rng.choice([
        f"Format your entire output as a single JSON object with exactly these keys: {desc}. Do not write anything outside the JSON object.",
        f"Return only valid JSON: one object with the keys {desc}, and no other text.",
    ])


# ---------------------------------------------------------------------------
# Response builder (the constraint transformers)
# ---------------------------------------------------------------------------


def split_evenly(items: list, n: int) -> list[list]:
    base, extra = divmod(len(items), n)
    groups, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        groups.append(items[start:start + size])
        start += size
    return groups


def render(spec, items: list[str]) -> str:
    """Applies the format, extras, casing and quoting transformers to the chosen sentences."""
    mode = spec["mode"]
    if mode == "paragraph":
        body = " ".join(items)
    elif mode == "bullets":
        body = "\n".join("* " + s for s in items)
    elif mode == "numbered":
        body = "\n".join(f"{i}. {s}" for i, s in enumerate(items, start=1))
    elif mode == "sections":
        parts = []
        for i, group in enumerate(split_evenly(items, spec["count"]), start=1):
            parts.append(f"{spec['marker']} {i}\n" + " ".join(group))
        body = "\n\n".join(parts)
    elif mode == "json":
        body = json.dumps(json_object(spec, items), indent=2, ensure_ascii=False)
    else:
        raise ValueError(mode)
    if spec.get("title"):
        body = f"<<{spec['title']}>>\n\n" + body
    if spec.get("ps"):
        body += f"\n\n{spec['ps_marker']} {spec['ps']}"
    if spec.get("end"):
        sep = " " if mode == "paragraph" and not spec.get("ps") else "\n\n"
        body += sep + spec["end"]
    if spec.get("lower"):
        body = body.lower()
    if spec.get("upper"):
        body = body.upper()
    if spec.get("quotes"):
        body = f'"{body}"'
    return body


def fits(spec, resp: str) -> bool:
    if spec.get("max_words") is not None and count_words(resp) > spec["max_words"]:
        return False
    if spec.get("max_sentences") is not None and count_sentences(resp) > spec["max_sentences"]:
        return False
    return True


def tip_keywords(items: list[str]) -> list[str]:
    common = {"before", "during", "should", "their", "every", "until", "instead", "whenever"}
    words = []
    for item in items:
        for w in re.findall(r"[A-Za-z]+", item):
            if len(w) >= 6 and w.lower() not in common and w.lower() not in [x.lower() for x in words]:
                words.append(w.lower())
    return words


def build_spec(t, mode, source, mods, rng, *, lang=None, json_kind=None, fixed=None):
    """Chooses everything about one response, then renders it.

    `mods` is a list of constraint names; `fixed` pins choices that rng would otherwise make.
    """
    fixed = fixed or {}
    if source == "tips" and not t["tips"]:
        source = "facts"
    if mode == "json" and json_kind == "F" and not t["tips"]:
        json_kind = "A"
    if mode == "json":
        source = "tips" if json_kind == "F" else "facts"
    spec = {"topic": t, "mode": mode, "source": source, "mods": list(mods), "lang": lang,
            "json_kind": json_kind}
    spec["question"] = fixed.get("question", rng.choice(t["questions"]))

    if lang:
        pool = TRANSLATIONS[(t["slug"], lang)]
    else:
        pool = t["tips"] if source == "tips" else t["facts"]
    indexed = list(enumerate(pool))

    candidates = indexed
    if "exclude" in mods:
        word = fixed.get("exclude") or rng.choice(t["avoid"])
        spec["exclude"] = word
        candidates = [(i, s) for i, s in indexed if not has_word(s, word)]

    mandatory = []
    if "include" in mods:
        if "include" in fixed:
            keywords = fixed["include"]
        else:
            if source == "tips":
                pool_words = tip_keywords([s for _, s in candidates[:3]])
            else:
                pool_words = [k for k in t["keywords"] if any(has_word(s, k) for _, s in candidates)]
            if spec.get("exclude"):
                pool_words = [k for k in pool_words if not has_word(k, spec["exclude"])]
            if not pool_words:
                raise SystemExit(f"{t['slug']}: no keyword available for an inclusion constraint")
            keywords = rng.sample(pool_words, min(len(pool_words), rng.choice([1, 2])))
            keywords.sort(key=lambda k: pool_words.index(k))
        spec["include"] = keywords
        for k in keywords:
            first = next(c for c in candidates if has_word(c[1], k))
            if first not in mandatory:
                mandatory.append(first)
        mandatory.sort()
    # always keep the opening (defining) sentence, then the keyword sentences, then vary the others
    head = candidates[:1]
    others = [c for c in candidates[1:] if c not in mandatory]
    if not fixed.get("prefix"):
        rng.shuffle(others)
    required = head + [c for c in mandatory if c not in head]
    ordered = required + others

    # how many sentences to use
    n_avail = len(ordered)
    if mode == "paragraph":
        lo = 3 if ("max_words" in mods or "max_sentences" in mods) else 2
        k_max = fixed.get("k", rng.randint(lo, min(n_avail, lo + 2)))
        k_min = len(required)
        if "k" in fixed:
            k_min = k_max
    elif mode in ("bullets", "numbered"):
        k_max = k_min = min(fixed.get("count", rng.randint(3, 5)), n_avail)
        spec["count"] = k_max
    elif mode == "sections":
        spec["count"] = fixed.get("count", rng.choice([2, 3]))
        spec["marker"] = fixed.get("marker", rng.choice(["SECTION", "Section", "PART"]))
        k_max = min(n_avail, spec["count"] * 2)
        k_min = spec["count"]
    elif mode == "json":
        k = {"A": 4, "B": rng.randint(3, 4), "C": 3, "D": rng.randint(2, 3), "E": 2,
             "F": rng.randint(3, 4)}[json_kind]
        k_max = k_min = min(k, n_avail)
        spec["count"] = {"A": k_max - 1, "E": k_max}.get(json_kind, k_max)
    else:
        raise ValueError(mode)
    if k_min > k_max or k_min < len(required):
        raise SystemExit(f"cannot build {t['slug']} {mode} {mods}: not enough sentences")

    # extras
    spec["lower"] = "lower" in mods
    spec["upper"] = "upper" in mods
    spec["quotes"] = "quotes" in mods
    if "title" in mods:
        spec["title"] = t["title"]
    if "ps" in mods:
        spec["ps"] = POSTSCRIPTS[t["domain"]]
        spec["ps_marker"] = "p.s." if spec["lower"] else "P.S."
    if "end" in mods:
        phrase = fixed.get("end", rng.choice(CLOSING_PHRASES))
        spec["end"] = phrase.lower() if spec["lower"] else phrase.upper() if spec["upper"] else phrase
    if "max_words" in mods:
        spec["max_words"] = fixed.get("max_words", rng.choice([25, 30, 40, 50] if mode == "paragraph" else [50, 60, 80]))
    if "max_sentences" in mods:
        spec["max_sentences"] = fixed.get("max_sentences", rng.choice([2, 3]) + (1 if spec.get("end") else 0))

    # truncation: keep as many whole sentences as the length limits allow
    for _ in range(20):
        for k in range(k_max, k_min - 1, -1):
            items = [s for _, s in sorted(ordered[:k])]
            resp = render(spec, items)
            if fits(spec, resp):
                spec["items"], spec["response"] = items, resp
                break
        if "response" in spec:
            break
        if "max_words" in fixed or "max_sentences" in fixed:
            raise SystemExit(f"{t['slug']}: fixed length limit cannot be met")
        if spec.get("max_words") is not None:
            spec["max_words"] += 10
        if spec.get("max_sentences") is not None:
            spec["max_sentences"] += 1
    else:
        raise SystemExit(f"{t['slug']}: could not fit length limits")

    spec["constraints"] = constraints_of(spec)
    return spec


def constraints_of(spec) -> list:
    cs = []
    mode = spec["mode"]
    if mode == "bullets":
        cs.append(("bullets", spec["count"]))
    if mode == "numbered":
        cs.append(("numbered", spec["count"]))
    if mode == "sections":
        cs.append(("sections", (spec["marker"], spec["count"])))
    if mode == "json":
        kind = JSON_KINDS[spec["json_kind"]]
        cs.append(("json_keys", kind["keys"]))
        if kind["list_key"] and spec["json_kind"] != "E":
            cs.append(("json_list_len", (kind["list_key"], spec["count"])))
    if spec.get("lower"):
        cs.append(("lowercase", None))
    if spec.get("upper"):
        cs.append(("uppercase", None))
    if spec.get("max_words") is not None:
        cs.append(("max_words", spec["max_words"]))
    if spec.get("max_sentences") is not None:
        cs.append(("max_sentences", spec["max_sentences"]))
    if spec.get("include"):
        cs.append(("include", spec["include"]))
    if spec.get("exclude"):
        cs.append(("exclude", spec["exclude"]))
    if spec.get("end"):
        cs.append(("end_phrase", spec["end"]))
    if spec.get("quotes"):
        cs.append(("quotes", None))
    if spec.get("title"):
        cs.append(("title", None))
    if spec.get("ps"):
        cs.append(("postscript", spec["ps_marker"]))
    if spec.get("lang"):
        cs.append(("language", spec["lang"]))
    return cs


# ---------------------------------------------------------------------------
# Instruction writer
# ---------------------------------------------------------------------------


def base_request(spec, rng) -> str:
    t, mode, n = spec["topic"], spec["mode"], spec.get("count")
    tips = spec["source"] == "tips"
    if mode == "paragraph" or (mode == "json" and spec["json_kind"] == "D"):
        return spec["question"]
    if mode == "bullets":
        if tips:
            return rng.choice([f"Give me {n} tips for {t['tip_goal']}.", f"What are your top {n} tips for {t['tip_goal']}?"])
        return rng.choice([f"Give me {n} key facts about {t['name']}.",
                           f"What are {n} important things to know about {t['name']}?",
                           f"Summarize {t['name']} in {n} points."])
    if mode == "numbered":
        if tips:
            return rng.choice([f"List {n} tips for {t['tip_goal']}.", f"Share {n} practical tips for {t['tip_goal']}."])
        return rng.choice([f"List {n} facts about {t['name']}.", f"Tell me {n} interesting facts about {t['name']}."])
    if mode == "json":
        if tips:
            return f"I need advice on {t['tip_goal']}."
        return rng.choice([f"Describe {t['name']}.", f"Summarize the essentials of {t['name']}.", f"Tell me about {t['name']}."])
    if mode == "sections":
        return rng.choice([f"Write a short explainer about {t['name']}.", f"Write a brief article on {t['name']}."])
    raise ValueError(mode)


def instruction_for(spec, rng) -> str:
    mode, n = spec["mode"], spec.get("count")
    parts = [base_request(spec, rng)]
    if mode == "bullets":
        parts.append(rng.choice([
            f'Your answer must contain exactly {n} bullet points, each starting with "* ".',
            f'Use exactly {n} markdown bullet points such as "* This is a point".',
        ]))
    if mode == "numbered":
        parts.append(rng.choice([
            f"Format it as a numbered list with exactly {n} items (1., 2., ...).",
            f"Give exactly {n} items in a numbered list.",
        ]))
    if mode == "sections":
        m = spec["marker"]
        parts.append(rng.choice([
            f"Your response must have {n} sections. Mark the beginning of each section with {m} X, such as: {m} 1.",
            f"Split it into exactly {n} sections, each starting on its own line with {m} followed by its number ({m} 1, {m} 2, ...).",
        ]))
    if mode == "json":
        parts.append(json_instruction(spec, rng))
    extra = []
    lang = spec.get("lang")
    if lang:
        L = LANG_NAMES[lang]
        extra.append(rng.choice([f"Respond only in {L}; no other language is allowed.",
                                 f"Your entire answer must be in {L}.", f"Answer in {L}."]))
    if spec.get("lower"):
        extra.append(rng.choice([
            "Your entire response should be in all lowercase letters. No capital letters are allowed."
            if lang else
            "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
            "Write everything in lowercase letters only.",
            "Do not use any capital letters in your response.",
        ]))
    if spec.get("upper"):
        extra.append(rng.choice([
            "Your entire response should be in English and in all capital letters.",
            "Write your whole answer in uppercase letters only.",
            "Use only capital letters in your response.",
        ]))
    if spec.get("max_words") is not None:
        w = spec["max_words"]
        extra.append(rng.choice([f"Answer with at most {w} words.", f"Keep your response to no more than {w} words.",
                                 f"Use {w} words or fewer."]))
    if spec.get("max_sentences") is not None:
        s = spec["max_sentences"]
        extra.append(rng.choice([f"Your response should contain at most {s} sentences.",
                                 f"Use no more than {s} sentences.", f"Keep it to {s} sentences or fewer."]))
    if spec.get("include"):
        kw = quoted_list(spec["include"])
        plural = len(spec["include"]) > 1
        extra.append(rng.choice([f"Include the keyword{'s' if plural else ''} {kw} in the response.",
                                 f"Make sure to use the word{'s' if plural else ''} {kw}.",
                                 f"Your answer must mention {kw}."]))
    if spec.get("exclude"):
        w = spec["exclude"]
        extra.append(rng.choice([f'Do not include the word "{w}" in your response.', f'Avoid using the word "{w}".',
                                 f'Never use the word "{w}" anywhere in your answer.']))
    if spec.get("title"):
        extra.append(rng.choice([
            "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
            "Give your answer a title wrapped in double angular brackets, like <<my title>>.",
        ]))
    if spec.get("ps"):
        m = spec["ps_marker"]
        extra.append(rng.choice([f'At the end of your response, please explicitly add a postscript starting with "{m}"',
                                 f'Add a postscript at the end that starts with "{m}"']))
    if spec.get("quotes"):
        extra.append(rng.choice(["Wrap your entire response with double quotation marks.",
                                 "Put your whole answer inside double quotes."]))
    rng.shuffle(extra)
    if spec.get("end"):
        p = spec["end"]
        extra.append(rng.choice([f'Finish your response with this exact phrase: "{p}" No other words should follow it.',
                                 f'End your answer with the exact phrase "{p}" and nothing after it.']))
    text = " ".join(parts + extra)
    return text.replace('.".', '."').replace('?".', '?"').replace('!".', '!"')


# ---------------------------------------------------------------------------
# Pseudo-code for one spec
# ---------------------------------------------------------------------------


def pc_for_spec(spec, rng, *, force_print=None) -> str:
    t, mode, mods = spec["topic"], spec["mode"], spec["mods"]
    tips = spec["source"] == "tips"
    h = {k: rng.choice(v) for k, v in HELPERS.items()}
    lang = spec.get("lang")
    params, steps, goal_clauses = [], [], []

    # entry parameter and function name
    if mode == "paragraph" or (mode == "json" and spec["json_kind"] == "D"):
        params.append(("question", "str", "the question the user asked", spec["question"]))
        subject = "question"
    elif tips:
        params.append(("goal", "str", "what the tips should help the reader do", t["tip_goal"]))
        subject = "goal"
    else:
        params.append(("topic", "str", "the subject to write about", t["name"]))
        subject = "topic"
    verb_key = mode + ("_tips" if tips and mode in ("bullets", "numbered") else "")
    verb = rng.choice(FN_VERBS[verb_key])
    stem = slugify(t["tip_goal"] if tips else t["slug"].replace("_", " "))
    suffix_options = []
    if lang:
        suffix_options.append(f"in_{LANG_NAMES[lang].lower()}")
    if spec.get("lower"):
        suffix_options.append("in_lowercase")
    if spec.get("upper"):
        suffix_options.append("in_capitals")
    if spec.get("max_words") is not None or spec.get("max_sentences") is not None:
        suffix_options.append("briefly")
    if spec.get("exclude"):
        suffix_options.append(f"without_{slugify(spec['exclude'])}")
    if spec.get("title"):
        suffix_options.append("with_title")
    if spec.get("quotes"):
        suffix_options.append("in_quotes")
    fn_name = f"{verb}_{stem}"
    if suffix_options:
        fn_name += "_" + rng.choice(suffix_options)

    # goal sentence
    n = spec.get("count")
    if mode == "paragraph":
        goal = f"Answer a question about {t['name']}"
    elif mode == "bullets":
        goal = (f"Give exactly num_bullets practical tips for {t['tip_goal']} as markdown bullet points" if tips
                else f"List exactly num_bullets key facts about {t['name']} as markdown bullet points")
    elif mode == "numbered":
        goal = (f"Give exactly num_items tips for {t['tip_goal']} as a numbered list" if tips
                else f"List exactly num_items facts about {t['name']} as a numbered list")
    elif mode == "json":
        goal = f"Describe {t['tip_goal'] if tips else t['name']} as a JSON object with exactly the required keys"
    else:
        goal = f"Write a short article about {t['name']} split into num_sections numbered sections"

    # parameters for each constraint
    if mode == "bullets":
        params.append(("num_bullets", "int", "exact number of bullet points", n))
    if mode == "numbered":
        params.append(("num_items", "int", "exact number of list items", n))
    if mode == "sections":
        params.append(("num_sections", "int", "how many sections to write", n))
        params.append(("section_marker", "str", "the word that starts each section heading", spec["marker"]))
    if mode == "json":
        kind = JSON_KINDS[spec["json_kind"]]
        params.append(("required_keys", "list[str]", "the keys the JSON object must have", kind["keys"]))
        if kind["list_key"] and spec["json_kind"] != "E":
            params.append((f"num_{kind['list_key']}", "int", f"how many entries go in the {kind['list_key']} list",
                           spec["count"]))
    if lang:
        params.append(("language", "str", "the only language allowed in the answer", LANG_NAMES[lang]))
        goal_clauses.append("in the requested language")
    if spec.get("max_words") is not None:
        params.append(("max_words", "int", "upper bound on the length of the whole response in words",
                       spec["max_words"]))
        goal_clauses.append("using no more than max_words words")
    if spec.get("max_sentences") is not None:
        params.append(("max_sentences", "int", "upper bound on the number of sentences", spec["max_sentences"]))
        goal_clauses.append("in at most max_sentences sentences")
    if spec.get("include"):
        params.append(("keywords", "list[str]", "words that must appear in the answer", spec["include"]))
        goal_clauses.append("mentioning every keyword")
    if spec.get("exclude"):
        params.append(("forbidden_word", "str", "a word that must not appear anywhere", spec["exclude"]))
        goal_clauses.append("without ever using the forbidden word")
    title_p = rng.choice(TITLE_PARAM)
    ps_p = rng.choice(PS_PARAM)
    lower_p = rng.choice(LOWER_PARAM)
    upper_p = rng.choice(UPPER_PARAM)
    quote_p = rng.choice(QUOTE_PARAM)
    if spec.get("title"):
        params.append((title_p, "bool", "whether to start with a title in double angular brackets", True))
        goal_clauses.append("with a title in double angular brackets")
    if spec.get("ps"):
        params.append((ps_p, "bool", f"whether to add a postscript starting with {spec['ps_marker']}", True))
        goal_clauses.append(f"followed by a postscript that starts with {spec['ps_marker']}")
    if spec.get("end"):
        params.append(("closing_phrase", "str", "the exact phrase the response must end with", spec["end"]))
        goal_clauses.append("ending with the exact closing phrase")
    if spec.get("lower"):
        params.append((lower_p, "bool", "whether every letter must be lowercase", True))
        goal_clauses.append("written entirely in lowercase letters")
    if spec.get("upper"):
        params.append((upper_p, "bool", "whether every letter must be a capital letter", True))
        goal_clauses.append("written entirely in capital letters")
    if spec.get("quotes"):
        params.append((quote_p, "bool", "whether to wrap the whole response in double quotation marks", True))
        goal_clauses.append("wrapped in double quotation marks")
    if goal_clauses:
        goal += ", " + human_join(goal_clauses)
    if not goal.endswith("."):
        goal += "."

    is_list_mode = mode in ("bullets", "numbered", "sections", "json")
    str_mods = any(spec.get(k) for k in ("title", "ps", "end", "lower", "upper", "quotes"))
    var = rng.choice(["answer", "response", "reply", "text", "output"])
    items = "tips" if tips else rng.choice(["facts", "points", "items"])

    # content
    if mode == "paragraph":
        steps.append(("draft an answer to the question", f"{var} = {h['answer']}(question)"))
        if spec.get("exclude"):
            steps.append(("rewrite any sentence that uses the forbidden word",
                          f"{var} = {h['avoid']}({var}, forbidden_word)"))
        if spec.get("include"):
            steps.append(("make sure every keyword appears at least once",
                          f"for keyword in keywords:\n    {var} = {h['ensure']}({var}, keyword)"))
        if lang:
            steps.append(("translate the answer into the target language",
                          f"{var} = translate({var}, to=language)"))
    else:
        src = h["tips"] if tips else h["facts"]
        what = "brainstorm practical tips for the goal" if tips else (
            "collect the facts needed to answer the question" if subject == "question" else "collect key facts about the topic")
        steps.append((what, f"{items} = {src}({subject})"))
        if spec.get("exclude"):
            steps.append(("drop every item that mentions the forbidden word",
                          f"{items} = {h['drop']}({items}, forbidden_word)"))
        if spec.get("include"):
            steps.append(("move the items that mention a keyword to the front",
                          f"{items} = {h['prio']}({items}, keywords)"))
        if lang:
            steps.append(("translate every item into the target language",
                          f"translated = []\nfor item in {items}:\n    translated.append(translate(item, to=language))"))
            steps.append((None, f"{items} = translated"))

    if spec.get("title"):
        steps.append(("write a short, descriptive title", f"title = {h['title']}({subject})"))
    if spec.get("ps"):
        steps.append(("write a one-line postscript", f"postscript = {h['ps']}({subject})"))

    # length limits
    if spec.get("max_words") is not None:
        reserve = []
        if spec.get("title"):
            reserve.append("count_words(title)")
        if spec.get("ps"):
            reserve.append("count_words(postscript) - 1")
        if spec.get("end"):
            reserve.append("count_words(closing_phrase)")
        if mode == "sections":
            reserve.append("2 * num_sections")
        limit = "max_words"
        if reserve:
            steps.append(("leave room for the other parts, which also count toward the limit",
                          "word_budget = max_words - " + " - ".join(reserve)))
            limit = "word_budget"
        if mode == "paragraph":
            steps.append(("keep whole sentences while the answer fits in the word limit",
                          f"{var} = {h['trim_words']}({var}, {limit})"))
        else:
            steps.append(("keep whole items while their total length fits in the word limit",
                          f"{items} = {h['items_words']}({items}, {limit})"))
    if spec.get("max_sentences") is not None:
        limit = "max_sentences"
        if spec.get("end"):
            steps.append(("the closing phrase is a sentence too, so leave room for it",
                          "sentence_budget = max_sentences - 1"))
            limit = "sentence_budget"
        if mode == "paragraph":
            steps.append(("keep only the first sentences allowed", f"{var} = {h['trim_sents']}({var}, {limit})"))
        else:
            steps.append(("keep only as many items as sentences allowed",
                          f"{items} = {h['items_sents']}({items}, {limit})"))

    # formatting
    ret_type, ret_desc = "str", "the final response"
    if mode == "bullets":
        steps.append(("keep exactly num_bullets items", f"{items} = {items}[:num_bullets]"))
        steps.append(("turn each item into a markdown bullet",
                      f"bullet_lines = []\nfor item in {items}:\n    bullet_lines.append(\"* \" + item)"))
        if str_mods:
            steps.append(("put one bullet per line", f"{var} = \"\\n\".join(bullet_lines)"))
        else:
            ret_type, ret_desc, var = "list[str]", "the bullet lines, one per point", "bullet_lines"
    elif mode == "numbered":
        steps.append(("keep exactly num_items items", f"{items} = {items}[:num_items]"))
        steps.append(("number the items starting from 1",
                      f"numbered_lines = []\nfor position, item in enumerate({items}, start=1):\n"
                      f"    numbered_lines.append(f\"{{position}}. {{item}}\")"))
        if str_mods:
            steps.append(("put one item per line", f"{var} = \"\\n\".join(numbered_lines)"))
        else:
            ret_type, ret_desc, var = "list[str]", "the numbered lines in order", "numbered_lines"
    elif mode == "sections":
        steps.append(("split the items into num_sections groups", f"groups = {h['split']}({items}, num_sections)"))
        steps.append(("start each group with its numbered heading on its own line",
                      "sections = []\nfor index, group in enumerate(groups, start=1):\n"
                      f"    sections.append(f\"{{section_marker}} {{index}}\\n\" + {h['join']}(group))"))
        steps.append(("separate the sections with blank lines", f"{var} = \"\\n\\n\".join(sections)"))
    elif mode == "json":
        kind = spec["json_kind"]
        fields = {
            "A": ['"topic": topic', f'"summary": summarize_in_one_sentence({items})', f'"key_facts": {items}[1:num_key_facts + 1]'],
            "B": ['"title": make_title(topic)', f'"points": {items}[:num_points]'],
            "C": ['"subject": topic', '"category": field_of_study(topic)', f'"facts": {items}[:num_facts]'],
            "D": ['"question": question', f'"answer": {h["join"]}({items})'],
            "E": ['"name": topic', f'"description": {h["join"]}({items}[:2])', '"related_terms": key_terms(topic, count=3)'],
            "F": ['"goal": goal', f'"tips": {items}[:num_tips]'],
        }[kind]
        obj = rng.choice(["result", "data", "summary_object"])
        steps.append(("assemble the object with exactly the requested keys",
                      f"{obj} = {{\n" + "".join(f"    {f},\n" for f in fields) + "}"))
        if spec.get("lower"):
            steps.append(("lowercase every string in the object",
                          f"if {lower_p}:\n    {obj} = lowercase_all_strings({obj})"))
        steps.append(("confirm the object has exactly the required keys",
                      f"assert sorted({obj}) == sorted(required_keys)"))
        if rng.random() < 0.5:
            ret_type, ret_desc, var = "dict", "the JSON object", obj
        else:
            steps.append(("serialize the object as JSON text with nothing around it",
                          f"{var} = json.dumps({obj}, indent=2)"))
            ret_desc = "the JSON text"
    elif mode == "paragraph":
        pass

    if spec.get("title"):
        steps.append(("put the title in double angular brackets on the first line",
                      f"if {title_p}:\n    {var} = f\"<<{{title}}>>\\n\\n\" + {var}"))
    if spec.get("ps"):
        steps.append(("add the postscript after a blank line",
                      f"if {ps_p}:\n    {var} = {var} + \"\\n\\n{spec['ps_marker']} \" + postscript"))
    if spec.get("end"):
        sep = "\" \"" if mode == "paragraph" and not spec.get("ps") else "\"\\n\\n\""
        steps.append(("end with the exact closing phrase and nothing after it",
                      f"{var} = {var} + {sep} + closing_phrase"))
    if spec.get("lower"):
        if mode != "json":
            steps.append(("convert every letter to lowercase", f"if {lower_p}:\n    {var} = {h['lower']}({var})"))
    if spec.get("upper"):
        steps.append(("convert every letter to uppercase", f"if {upper_p}:\n    {var} = {h['upper']}({var})"))
    if spec.get("quotes"):
        steps.append(("wrap the entire response in double quotation marks",
                      f"if {quote_p}:\n    {var} = '\"' + {var} + '\"'"))

    use_print = force_print if force_print is not None else (ret_type == "str" and rng.random() < 0.12)
    if use_print and ret_type == "str":
        steps.append(("show the final response to the user", f"print({var})"))
        ret_type, ret_desc = "None", "nothing; the response is printed"
    else:
        steps.append((None, f"return {var}"))
    return make_pc(fn_name, goal, params, steps, ret_type, ret_desc)


# ---------------------------------------------------------------------------
# Record generators
# ---------------------------------------------------------------------------

# (mode, source or JSON kind, constraints)
COMBOS = [
    ("paragraph", "facts", ["lower"]),
    ("paragraph", "facts", ["max_words"]),
    ("paragraph", "facts", ["max_words", "lower"]),
    ("paragraph", "facts", ["upper"]),
    ("paragraph", "facts", ["max_sentences", "include"]),
    ("paragraph", "facts", ["exclude"]),
    ("paragraph", "facts", ["end"]),
    ("paragraph", "facts", ["quotes"]),
    ("paragraph", "facts", ["title"]),
    ("paragraph", "facts", ["title", "lower", "max_words"]),
    ("paragraph", "facts", ["ps"]),
    ("paragraph", "facts", ["max_sentences", "exclude", "upper"]),
    ("paragraph", "facts", ["max_words", "include", "end"]),
    ("paragraph", "facts", ["max_sentences", "quotes", "lower"]),
    ("paragraph", "facts", ["include", "exclude"]),
    ("paragraph", "facts", ["ps", "lower"]),
    ("bullets", "tips", []),
    ("bullets", "facts", ["lower"]),
    ("bullets", "facts", ["title"]),
    ("bullets", "tips", ["end"]),
    ("bullets", "facts", ["upper", "exclude"]),
    ("bullets", "tips", ["include"]),
    ("numbered", "facts", []),
    ("numbered", "tips", ["lower"]),
    ("numbered", "facts", ["include", "title"]),
    ("numbered", "tips", ["title", "end"]),
    ("json", "A", []),
    ("json", "B", ["lower"]),
    ("json", "C", ["include"]),
    ("json", "D", ["exclude"]),
    ("json", "E", []),
    ("json", "F", []),
    ("sections", "facts", []),
    ("sections", "facts", ["title"]),
    ("sections", "facts", ["end"]),
    ("sections", "facts", ["exclude", "max_words"]),
]

# (topic slug, language, mode, constraints) for single-turn records answered in another language
LANGUAGE_PLAN = [
    ("photosynthesis", "fr", "paragraph", ["max_sentences"]),
    ("water_cycle", "fr", "bullets", []),
    ("sourdough", "fr", "paragraph", ["lower"]),
    ("printing_press", "fr", "paragraph", ["quotes"]),
    ("volcanoes", "es", "bullets", []),
    ("kyoto", "es", "paragraph", ["max_words"]),
    ("risotto", "es", "numbered", []),
    ("compound_interest", "es", "paragraph", []),
    ("black_holes", "de", "paragraph", ["max_sentences"]),
    ("honeybees", "de", "bullets", []),
    ("git", "de", "paragraph", ["quotes"]),
    ("sleep", "de", "numbered", []),
]

N_SINGLE = 84      # English single-turn records with pseudo-code (8 of them get a system prompt)
N_NO_PC = 8        # single-turn records without a pseudo_code field


def user_assistant(instruction: str, response: str, system: str | None = None) -> list[dict]:
    msgs = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": instruction})
    msgs.append({"role": "assistant", "content": response})
    return msgs


def single_records(rng):
    out = []
    for i in range(N_SINGLE + N_NO_PC):
        mode, source, mods = COMBOS[i % len(COMBOS)]
        if source in ("tips", "F"):
            t = TIPS_TOPICS[(i * 7) % len(TIPS_TOPICS)]
        else:
            t = TOPICS[(i * 11) % len(TOPICS)]
        json_kind = source if mode == "json" else None
        spec = build_spec(t, mode, "facts" if mode == "json" else source, mods, rng, json_kind=json_kind)
        instruction = instruction_for(spec, rng)
        with_pc = i < N_SINGLE
        system = SYSTEM_PROMPTS[t["domain"]] if with_pc and i % 10 == 5 else None
        rec = {"messages": user_assistant(instruction, spec["response"], system)}
        if with_pc:
            rec["pseudo_code"] = pc_for_spec(spec, rng)
        kind = "single" if with_pc else "no_pc"
        out.append((kind, rec, [spec["constraints"]]))
    return out


def language_records(rng):
    out = []
    for slug, lang, mode, mods in LANGUAGE_PLAN:
        t = TOPIC_BY_SLUG[slug]
        fixed = {"question": t["questions"][0]}
        if mode in ("bullets", "numbered"):
            fixed["count"] = 3
        spec = build_spec(t, mode, "facts", mods, rng, lang=lang, fixed=fixed)
        rec = {"messages": user_assistant(instruction_for(spec, rng), spec["response"]),
               "pseudo_code": pc_for_spec(spec, rng)}
        out.append(("single", rec, [spec["constraints"]]))
    return out


def followup_pc(fn_name, goal, prev, extra_params, steps, ret_type="str", ret_desc="the rewritten answer"):
    params = [("previous_answer", "str", "the assistant's previous reply in this conversation", prev)]
    return make_pc(fn_name, goal, params + extra_params, steps, ret_type, ret_desc)


def multi_turn_records(rng):
    out = []

    def add(messages, pcs, checks, system=None):
        msgs = ([{"role": "system", "content": system}] if system else []) + messages
        out.append(("multi", {"messages": msgs, "pseudo_code": pcs}, checks))

    def turn1(slug, mode, source, mods, fixed, lang=None, json_kind=None):
        spec = build_spec(TOPIC_BY_SLUG[slug], mode, source, mods, rng, lang=lang, json_kind=json_kind, fixed=fixed)
        return spec, instruction_for(spec, rng), pc_for_spec(spec, rng, force_print=False)

    # 1. answer, then rewrite it in capitals
    s, ins, pc = turn1("volcanoes", "paragraph", "facts", ["max_sentences"], {"k": 3, "max_sentences": 3})
    caps = s["response"].upper()
    pc2 = followup_pc(
        "rewrite_answer_in_capitals",
        "Rewrite the previous answer so that every letter is a capital letter, keeping the wording.",
        s["response"], [("all_caps", "bool", "whether every letter must be uppercase", True)],
        [("keep the same wording as before", "rewritten = previous_answer"),
         ("convert every letter to uppercase", "if all_caps:\n    rewritten = to_uppercase(rewritten)"),
         (None, "return rewritten")])
    add([{"role": "user", "content": ins}, {"role": "assistant", "content": s["response"]},
         {"role": "user", "content": "Now rewrite your answer in all capital letters."},
         {"role": "assistant", "content": caps}],
        [pc, pc2], [s["constraints"], [("uppercase", None), ("max_sentences", 3)]])

    # 2. bullets, then the same points as JSON
    s, ins, pc = turn1("coral_reefs", "bullets", "facts", [], {"count": 3})
    as_json = json.dumps({"facts": s["items"]}, indent=2, ensure_ascii=False)
    pc2 = followup_pc(
        "convert_bullets_to_json",
        "Turn the bullet points of the previous answer into a JSON object with a single list-valued key.",
        s["response"], [("key", "str", "the only key of the JSON object", "facts")],
        [("strip the bullet marker from every line",
          "points = []\nfor line in previous_answer.splitlines():\n    points.append(line.removeprefix(\"* \"))"),
         ("store the points under the requested key", "result = {key: points}"),
         (None, "return result")], ret_type="dict", ret_desc="an object whose only key holds the list of points")
    add([{"role": "user", "content": ins}, {"role": "assistant", "content": s["response"]},
         {"role": "user", "content": 'Thanks! Can you turn those three points into a JSON object with one key, "facts", whose value is the list of points? Output only the JSON.'},
         {"role": "assistant", "content": as_json}],
        [pc, pc2], [s["constraints"], [("json_keys", ["facts"]), ("json_list_len", ("facts", 3))]])

    # 3. small talk first (no pseudo-code), then a constrained request
    s = build_spec(TOPIC_BY_SLUG["iceland"], "numbered", "tips", ["lower"], rng, fixed={"count": 4})
    ins = "Great. Give me 4 safety tips as a numbered list, all in lowercase."
    pc2 = pc_for_spec(s, rng, force_print=False)
    add([{"role": "user", "content": "Hi! I'm planning a road trip around Iceland next summer."},
         {"role": "assistant", "content": "That sounds like a wonderful trip! What would you like to know?"},
         {"role": "user", "content": ins}, {"role": "assistant", "content": s["response"]}],
        [None, pc2], [[], s["constraints"]])

    # 4. answer, translate into French, thank you (system prompt)
    s, ins, pc = turn1("heart", "paragraph", "facts", ["max_sentences"], {"k": 3, "max_sentences": 3, "prefix": True})
    fr = " ".join(TRANSLATIONS[("heart", "fr")])
    pc2 = followup_pc(
        "translate_previous_answer",
        "Translate the previous answer into the requested language, sentence by sentence.",
        s["response"], [("language", "str", "the language to translate into", "French")],
        [("split the answer into sentences so nothing is dropped", "sentences = split_sentences(previous_answer)"),
         ("translate each sentence on its own",
          "translated = []\nfor sentence in sentences:\n    translated.append(translate(sentence, to=language))"),
         ("join the translated sentences back into one paragraph", "translation = \" \".join(translated)"),
         (None, "return translation")], ret_desc="the translated answer")
    add([{"role": "user", "content": ins}, {"role": "assistant", "content": s["response"]},
         {"role": "user", "content": "Translate your answer into French."},
         {"role": "assistant", "content": fr},
         {"role": "user", "content": "Thank you, that's all I needed."},
         {"role": "assistant", "content": "You're welcome! Have a great day."}],
        [pc, pc2, None], [s["constraints"], [("language", "fr"), ("max_sentences", 3)], []],
        system="You are a multilingual assistant who can answer and translate in several languages.")

    # 5. answer, then Spanish in lowercase
    s, ins, pc = turn1("marathon", "paragraph", "facts", ["max_sentences"], {"k": 3, "max_sentences": 3, "prefix": True})
    es = " ".join(TRANSLATIONS[("marathon", "es")]).lower()
    pc2 = followup_pc(
        "translate_to_spanish_in_lowercase",
        "Translate the previous answer into Spanish and write it entirely in lowercase letters.",
        s["response"], [("language", "str", "the target language", "Spanish"),
                        ("all_lowercase", "bool", "whether every letter must be lowercase", True)],
        [("translate the whole answer", "translation = translate(previous_answer, to=language)"),
         ("lowercase every letter, including names and the first word",
          "if all_lowercase:\n    translation = to_lowercase(translation)"),
         (None, "return translation")], ret_desc="the translated, lowercased answer")
    add([{"role": "user", "content": ins}, {"role": "assistant", "content": s["response"]},
         {"role": "user", "content": "Please translate that into Spanish and write it in all lowercase letters."},
         {"role": "assistant", "content": es}],
        [pc, pc2], [s["constraints"], [("language", "es"), ("lowercase", None)]])

    # 6. bullets, the same bullets in German, thanks
    s, ins, pc = turn1("apollo11", "bullets", "facts", [], {"count": 3, "prefix": True})
    de = "\n".join("* " + x for x in TRANSLATIONS[("apollo11", "de")])
    pc2 = followup_pc(
        "translate_bullets_to_german",
        "Give the same bullet points as the previous answer, translated into German.",
        s["response"], [("language", "str", "the target language", "German"),
                        ("num_bullets", "int", "how many bullet points to keep", 3)],
        [("read the points back from the bullet lines",
          "points = []\nfor line in previous_answer.splitlines():\n    points.append(line.removeprefix(\"* \"))"),
         ("translate each point and keep the markdown bullet",
          "german_lines = []\nfor point in points[:num_bullets]:\n    german_lines.append(\"* \" + translate(point, to=language))"),
         (None, "return german_lines")], ret_type="list[str]", ret_desc="the translated bullet lines")
    add([{"role": "user", "content": ins}, {"role": "assistant", "content": s["response"]},
         {"role": "user", "content": "Now give me the same three bullet points in German."},
         {"role": "assistant", "content": de},
         {"role": "user", "content": "Danke, perfect."},
         {"role": "assistant", "content": "You're welcome! Let me know if you need anything else."}],
        [pc, pc2, None], [s["constraints"], [("language", "de"), ("bullets", 3)], []])

    # 7. plain answer, then a one-sentence summary
    s, ins, pc = turn1("index_funds", "paragraph", "facts", [],
                       {"k": 4, "prefix": True, "question": "What is an index fund?"})
    summary = "An index fund tracks a market index by holding most of its companies, which keeps fees low."
    pc2 = followup_pc(
        "summarize_in_one_sentence",
        "Summarize the previous answer in a single sentence that stays within the word limit.",
        s["response"], [("max_words", "int", "upper bound on the summary's length in words", 25)],
        [("keep only the main idea of the answer", "main_idea = extract_main_point(previous_answer)"),
         ("express it as exactly one sentence", "summary = write_one_sentence(main_idea)"),
         ("shorten it if it is longer than allowed",
          "if count_words(summary) > max_words:\n    summary = shorten(summary, max_words)"),
         (None, "return summary")], ret_desc="a one-sentence summary")
    add([{"role": "user", "content": ins}, {"role": "assistant", "content": s["response"]},
         {"role": "user", "content": "Summarize that in a single sentence of at most 25 words."},
         {"role": "assistant", "content": summary}],
        [pc, pc2], [s["constraints"], [("max_sentences", 1), ("max_words", 25)]])

    # 8. numbered tips, then the most important one in quotes
    s, ins, pc = turn1("coffee", "numbered", "tips", [], {"count": 4})
    best = '"Grinding whole beans right before brewing matters most, because ground coffee starts losing its aroma quickly."'
    pc2 = followup_pc(
        "pick_most_important_tip",
        "Choose the single most important tip from the previous list and explain it in one quoted sentence.",
        s["response"], [("max_sentences", "int", "how many sentences the answer may have", 1),
                        ("wrap_in_quotes", "bool", "whether to wrap the answer in double quotation marks", True)],
        [("read the tips from the numbered list", "tips = parse_numbered_list(previous_answer)"),
         ("pick the tip with the biggest effect on flavor", "best_tip = most_impactful(tips)"),
         ("explain why in one sentence", "answer = explain_choice(best_tip, max_sentences=max_sentences)"),
         ("wrap the whole answer in double quotation marks", "if wrap_in_quotes:\n    answer = '\"' + answer + '\"'"),
         (None, "return answer")], ret_desc="the quoted one-sentence answer")
    add([{"role": "user", "content": ins}, {"role": "assistant", "content": s["response"]},
         {"role": "user", "content": "Which of those matters most? Answer in one sentence and wrap the whole answer in double quotation marks."},
         {"role": "assistant", "content": best}],
        [pc, pc2], [s["constraints"], [("quotes", None), ("max_sentences", 1), ("include", ["beans"])]])

    # 9. plain answer, then add a title and a closing phrase, then thanks
    s, ins, pc = turn1("silk_road", "paragraph", "facts", [], {"k": 3})
    t = TOPIC_BY_SLUG["silk_road"]
    titled = f"<<{t['title']}>>\n\n{s['response']} Any other questions?"
    pc2 = followup_pc(
        "add_title_and_closing_phrase",
        "Add a title in double angular brackets to the previous answer and end it with the exact closing phrase.",
        s["response"], [("closing_phrase", "str", "the exact phrase the answer must end with", "Any other questions?")],
        [("write a title that fits the answer", "title = make_title(previous_answer)"),
         ("put the title in double angular brackets above the answer",
          "answer = f\"<<{title}>>\\n\\n\" + previous_answer"),
         ("end with the closing phrase and nothing after it", "answer = answer + \" \" + closing_phrase"),
         (None, "return answer")])
    add([{"role": "user", "content": ins}, {"role": "assistant", "content": s["response"]},
         {"role": "user", "content": 'Add a title wrapped in double angular brackets, like <<title>>, and end with the exact phrase "Any other questions?"'},
         {"role": "assistant", "content": titled},
         {"role": "user", "content": "Perfect, thank you!"},
         {"role": "assistant", "content": "You're welcome!"}],
        [pc, pc2, None], [s["constraints"], [("title", None), ("end_phrase", "Any other questions?")], []])

    # 10. greeting first (no pseudo-code), then a constrained request (system prompt)
    s = build_spec(TOPIC_BY_SLUG["recursion"], "paragraph", "facts", ["max_words", "exclude"], rng,
                   fixed={"max_words": 40, "exclude": "loop", "question": "Can you explain recursion?"})
    ins = instruction_for(s, rng)
    pc2 = pc_for_spec(s, rng, force_print=False)
    add([{"role": "user", "content": "Hello!"},
         {"role": "assistant", "content": "Hello! How can I help you today?"},
         {"role": "user", "content": ins}, {"role": "assistant", "content": s["response"]}],
        [None, pc2], [[], s["constraints"]], system=SYSTEM_PROMPTS["programming"])
    return out


def alpaca_records(rng):
    out = []

    def add(instruction, inp, output, checks, pc=None):
        rec = {"instruction": instruction, "input": inp, "output": output}
        if pc is not None:
            rec["pseudo_code"] = pc
        out.append((rec, checks))

    # 1. rewrite given text in lowercase
    text = " ".join(TOPIC_BY_SLUG["solar_panels"]["facts"][:3])
    add("Rewrite the following text so that it uses only lowercase letters.", text, text.lower(),
        [("lowercase", None)],
        make_pc("rewrite_text_in_lowercase", "Rewrite the given text using only lowercase letters, changing nothing else.",
                [("text", "str", "the text to rewrite", text),
                 ("all_lowercase", "bool", "whether every letter must be lowercase", True)],
                [("keep the wording exactly as given", "rewritten = text"),
                 ("convert every capital letter to lowercase", "if all_lowercase:\n    rewritten = to_lowercase(rewritten)"),
                 (None, "return rewritten")], "str", "the lowercased text"))

    # 2. summarize given text in exactly 2 bullets
    facts = TOPIC_BY_SLUG["composting"]["facts"]
    text = " ".join(facts[:4])
    output = "* " + facts[0] + "\n* " + facts[2]
    add('Summarize the following text in exactly 2 bullet points, using markdown bullets that start with "* ".',
        text, output, [("bullets", 2)],
        make_pc("summarize_text_in_bullets", "Summarize the given text as exactly num_bullets markdown bullet points.",
                [("text", "str", "the text to summarize", text),
                 ("num_bullets", "int", "exact number of bullet points", 2)],
                [("find the most important ideas in the text", "main_points = rank_key_points(text)"),
                 ("keep exactly num_bullets of them", "main_points = main_points[:num_bullets]"),
                 ("format each point as a markdown bullet",
                  "bullets = []\nfor point in main_points:\n    bullets.append(\"* \" + point)"),
                 (None, "return bullets")], "list[str]", "the bullet lines"))

    # 3. extract fields into JSON
    text = TOPIC_BY_SLUG["basketball"]["facts"][0]
    obj = {"sport": "basketball", "inventor": "James Naismith", "year": 1891, "place": "Springfield, Massachusetts"}
    add('Extract the information from the text below into a JSON object with the keys "sport", "inventor", "year" (a number) and "place". Output only the JSON.',
        text, json.dumps(obj, indent=2, ensure_ascii=False), [("json_keys", ["sport", "inventor", "year", "place"])],
        make_pc("extract_invention_facts_as_json",
                "Pull the sport, inventor, year and place out of the text and return them as a JSON object.",
                [("text", "str", "the sentence to extract from", text),
                 ("required_keys", "list[str]", "the keys the JSON object must have", ["sport", "inventor", "year", "place"])],
                [("find the name of the sport", "sport = find_sport_name(text)"),
                 ("find the person who invented it", "inventor = find_person(text)"),
                 ("find the year as a number, not a string", "year = int(find_year(text))"),
                 ("find where it happened", "place = find_place(text)"),
                 ("assemble the object", "result = {\n    \"sport\": sport,\n    \"inventor\": inventor,\n    \"year\": year,\n    \"place\": place,\n}"),
                 ("confirm the object has exactly the required keys", "assert sorted(result) == sorted(required_keys)"),
                 (None, "return result")], "dict", "the extracted fields"))

    # 4. translate a sentence into Spanish
    text = TOPIC_BY_SLUG["volcanoes"]["facts"][1]
    output = TRANSLATIONS[("volcanoes", "es")][1]
    add("Translate the following sentence into Spanish.", text, output, [("language", "es"), ("max_sentences", 1)],
        make_pc("translate_sentence_to_spanish", "Translate one English sentence into natural Spanish.",
                [("sentence", "str", "the English sentence", text),
                 ("language", "str", "the target language", "Spanish")],
                [("translate the meaning, not word by word", "translation = translate(sentence, to=language)"),
                 ("keep technical terms such as magma and lava", "translation = keep_terms(translation, [\"magma\", \"lava\"])"),
                 (None, "return translation")], "str", "the Spanish sentence"))

    # 5-6. no input: generated with the same building blocks as the Tulu records
    for slug, mode, source, mods, fixed in [
        ("coffee", "bullets", "tips", [], {"count": 3}),
        ("hash_tables", "paragraph", "facts", ["max_words"], {"max_words": 40, "question": "What is a hash table?"}),
    ]:
        s = build_spec(TOPIC_BY_SLUG[slug], mode, source, mods, rng, fixed=fixed)
        add(instruction_for(s, rng), "", s["response"], s["constraints"], pc_for_spec(s, rng, force_print=False))

    # 7. title plus the given paragraph
    t = TOPIC_BY_SLUG["aqueducts"]
    text = " ".join(t["facts"][:3])
    add("Write a title for the following paragraph, wrapped in double angular brackets like <<title>>, then repeat the paragraph unchanged.",
        text, f"<<{t['title']}>>\n\n{text}", [("title", None)],
        make_pc("add_title_to_paragraph", "Give the paragraph a title in double angular brackets and repeat it unchanged.",
                [("paragraph", "str", "the paragraph to title", text)],
                [("summarize the paragraph in a few words", "title = make_title(paragraph)"),
                 ("put the title on its own line in double angular brackets", "heading = f\"<<{title}>>\""),
                 ("repeat the paragraph exactly after a blank line", "result = heading + \"\\n\\n\" + paragraph"),
                 (None, "return result")], "str", "the titled paragraph"))

    # 8. uppercase and quotes
    text = " ".join(TOPIC_BY_SLUG["hydration"]["facts"][:2])
    add("Rewrite the text below in all capital letters and wrap the whole result in double quotation marks.",
        text, f'"{text.upper()}"', [("uppercase", None), ("quotes", None)],
        make_pc("shout_text_in_quotes", "Rewrite the text in capital letters and wrap it in double quotation marks.",
                [("text", "str", "the text to rewrite", text),
                 ("all_caps", "bool", "whether every letter must be uppercase", True),
                 ("wrap_in_quotes", "bool", "whether to wrap the result in double quotation marks", True)],
                [("convert every letter to uppercase", "if all_caps:\n    text = to_uppercase(text)"),
                 ("add a double quotation mark at both ends", "if wrap_in_quotes:\n    text = '\"' + text + '\"'"),
                 (None, "return text")], "str", "the rewritten text"))

    # 9. answer a question in German, at most 2 sentences
    de = TRANSLATIONS[("black_holes", "de")]
    output = de[0] + " " + de[2]
    add("Answer the question in German, using no more than 2 sentences.", "What is a black hole?", output,
        [("language", "de"), ("max_sentences", 2)],
        make_pc("answer_in_german_briefly", "Answer the question in German in at most max_sentences sentences.",
                [("question", "str", "the question to answer", "What is a black hole?"),
                 ("language", "str", "the only language allowed in the answer", "German"),
                 ("max_sentences", "int", "upper bound on the number of sentences", 2)],
                [("draft a short answer", "answer = generate_answer(question)"),
                 ("translate it into the target language", "answer = translate(answer, to=language)"),
                 ("keep only the allowed number of sentences", "answer = keep_first_sentences(answer, max_sentences)"),
                 (None, "return answer")], "str", "the German answer"))

    # 10. numbered list, no input
    s = build_spec(TOPIC_BY_SLUG["heart"], "numbered", "facts", [], rng, fixed={"count": 4})
    add(instruction_for(s, rng), "", s["response"], s["constraints"], pc_for_spec(s, rng, force_print=False))

    # 11-12. without pseudo-code
    s = build_spec(TOPIC_BY_SLUG["tides"], "paragraph", "facts", ["max_sentences", "exclude"], rng,
                   fixed={"max_sentences": 3, "exclude": "range", "question": "What causes the tides?"})
    add(instruction_for(s, rng), "", s["response"], s["constraints"])
    facts = TOPIC_BY_SLUG["olympics"]["facts"]
    text = " ".join(facts)
    output = "\n\n".join(f"SECTION {i + 1}\n{facts[2 * i]} {facts[2 * i + 1]}" for i in range(3))
    add("Split the following text into exactly 3 sections, marking each one with SECTION 1, SECTION 2 and SECTION 3 on its own line.",
        text, output, [("sections", ("SECTION", 3))])
    return out


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def validate_building_blocks():
    for t in TOPICS:
        for k in t["keywords"]:
            if not any(has_word(s, k) for s in t["facts"]):
                raise SystemExit(f"building blocks: keyword {k!r} of {t['slug']} is in no fact")
        for w in t["avoid"]:
            if not any(has_word(s, w) for s in t["facts"]):
                raise SystemExit(f"building blocks: avoid word {w!r} of {t['slug']} is in no fact")
            if has_word(t["title"], w) or has_word(t["name"], w) or has_word(t["facts"][0], w):
                raise SystemExit(f"building blocks: avoid word {w!r} is in the title, name or first fact of {t['slug']}")
        for s in t["facts"] + (t["tips"] or []):
            if count_sentences(s) != 1 or not s.endswith("."):
                raise SystemExit(f"building blocks: not one sentence: {s!r}")
            if re.match(r"(It|Its|They|Their|His|Her|This|These|Those)\b", s):
                raise SystemExit(f"building blocks: sentence must stand on its own: {s!r}")
    for (slug, lang), sents in TRANSLATIONS.items():
        if slug not in TOPIC_BY_SLUG or len(sents) != 3:
            raise SystemExit(f"building blocks: bad translation entry {slug}/{lang}")


def main() -> int:
    validate_building_blocks()
    rng = random.Random(SEED)
    tulu = single_records(rng) + language_records(rng) + multi_turn_records(rng)
    alpaca = alpaca_records(rng)

    # self-check: every assistant turn against the constraints of its user turn, every pseudo-code block
    for n, (kind, rec, checks) in enumerate(tulu):
        assistants = [m["content"] for m in rec["messages"] if m["role"] == "assistant"]
        users = [m for m in rec["messages"] if m["role"] == "user"]
        if len(assistants) != len(checks) or len(users) != len(checks):
            raise SystemExit(f"self-check failed: record {n}: turns and checks disagree")
        for turn, (resp, cs) in enumerate(zip(assistants, checks)):
            check_response(f"tulu record {n} turn {turn}", resp, cs)
        pcs = rec.get("pseudo_code")
        if isinstance(pcs, list):
            if len(pcs) != len(users):
                raise SystemExit(f"self-check failed: record {n}: pseudo_code length")
            pcs = [p for p in pcs if p is not None]
        elif isinstance(pcs, str):
            pcs = [pcs]
        else:
            pcs = []
        for p in pcs:
            check_pseudo_code(f"tulu record {n}", p)
    for n, (rec, cs) in enumerate(alpaca):
        check_response(f"alpaca record {n}", rec["output"], cs)
        if "pseudo_code" in rec:
            check_pseudo_code(f"alpaca record {n}", rec["pseudo_code"])

    # a deterministic shuffle so that kinds are mixed through the file, then ids in file order
    order = list(range(len(tulu)))
    random.Random(SEED + 1).shuffle(order)
    lines = []
    for new_id, n in enumerate(order, start=1):
        kind, rec, _ = tulu[n]
        obj = {"id": f"pctrain-ex-{new_id:04d}", "dataset": DATASET, "messages": rec["messages"]}
        if "pseudo_code" in rec:
            obj["pseudo_code"] = rec["pseudo_code"]
        lines.append(json.dumps(obj, ensure_ascii=False))
    alpaca_lines = [json.dumps(rec, ensure_ascii=False) for rec, _ in alpaca]

    tulu_text = "\n".join(lines) + "\n"
    alpaca_text = "\n".join(alpaca_lines) + "\n"
    for path, text in ((TULU_PATH, tulu_text), (ALPACA_PATH, alpaca_text)):
        if len(text.encode("utf-8")) > MAX_FILE_BYTES:
            raise SystemExit(f"{path.name} would be larger than {MAX_FILE_BYTES} bytes")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    TULU_PATH.write_text(tulu_text, encoding="utf-8")
    ALPACA_PATH.write_text(alpaca_text, encoding="utf-8")

    counts = {}
    for kind, rec, _ in tulu:
        counts[kind] = counts.get(kind, 0) + 1
    n_system = sum(1 for _, rec, _ in tulu if rec["messages"][0]["role"] == "system")
    n_alpaca_pc = sum(1 for rec, _ in alpaca if "pseudo_code" in rec)
    print(f"wrote {TULU_PATH.relative_to(ROOT)}: {len(tulu)} records "
          f"(single-turn with pseudo-code {counts.get('single', 0)}, multi-turn {counts.get('multi', 0)}, "
          f"without pseudo-code {counts.get('no_pc', 0)}; {n_system} with a system prompt), "
          f"{len(tulu_text.encode('utf-8'))} bytes")
    print(f"wrote {ALPACA_PATH.relative_to(ROOT)}: {len(alpaca)} records "
          f"({n_alpaca_pc} with pseudo-code), {len(alpaca_text.encode('utf-8'))} bytes")
    print("self-check passed: every response meets its constraints; every pseudo-code block parses")
    return 0


if __name__ == "__main__":
    sys.exit(main())
