#!/usr/bin/env python3
"""Generate zerolora's demo instruction data, demo/instructions.json.

Writes a JSON array of Alpaca-format records {"instruction", "input", "output"}: short
children's stories, descriptions and simple explanations, small sums, opposites, plurals,
rhymes and lists, and tasks that work on an input (past tense, sorting numbers, counting
words, guessing an animal, making a question, giving a title to, summarizing, finishing or
answering questions about a story, ...). The English is simple and TinyStories-like so that
the README demo's tiny model (stories260K, a 512-token vocabulary) can visibly learn from
it. Every answer is computed from the same pieces as its question, so it is correct.

All of the text is zerolora's own: the templates and word lists below were written for this
project and are under the same licence as the repository; no outside dataset is used. The
output depends only on --count and --seed (Python standard library, random.Random), so it is
byte-for-byte reproducible. It is committed; a test runs --check to keep it in sync.

Run:  python3 tools/make_demo_data.py [--output demo/instructions.json] [--count 1000] [--seed N]
      python3 tools/make_demo_data.py --check   # exit 1 if the committed file differs
"""
import argparse
import json
import pathlib
import random
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "demo" / "instructions.json"
DEFAULT_SEED = 260

GIRLS = ("Lily", "Mia", "Sue", "Anna", "Lucy", "Emma", "Sara", "Zoe", "Amy", "Kate", "Ella", "Rose")
BOYS = ("Tom", "Ben", "Max", "Sam", "Tim", "Jack", "Leo", "Joe", "Dan", "Bob", "Finn", "Jake")
HERO_KINDS = ("cat", "dog", "bunny", "bird", "mouse", "puppy", "duck", "bear", "fox", "frog")
HERO_ADJS = ("little", "happy", "kind", "small", "curious", "sweet", "cheerful")
HELPERS = (("owl", "wise old"), ("dog", "friendly"), ("bird", "little"), ("rabbit", "kind"),
           ("frog", "funny"), ("bear", "big"), ("squirrel", "busy"), ("child", "kind"))
COLORS = ("red", "blue", "yellow", "green", "pink", "purple", "orange")
TOYS = ("ball", "kite", "teddy bear", "toy car", "doll", "toy boat", "toy train")
SPOTS = ("under a big bush", "behind a tree", "in the tall grass", "next to a big rock",
         "under some leaves")
TOPPINGS = ("red strawberries", "chocolate", "blueberries", "slices of apple")
GAMES = ("tag", "hide and seek", "with a big ball", "on the swings", "in the sand")

INTROS = ("Once upon a time, there was {aN} named {N}.", "There once was {aN} named {N}.",
          "{N} was {aN} who lived near a big {place}.")
HELPER_INTROS = ("Then {H}, {hk}, came by.", "Just then, {hk} named {H} came to say hello.")
CLOSINGS = ("From that day on, {N} and {H} played together every day.",
            "{N} learned that friends always help each other.", "It was the best day ever.",
            "That night, {N} went to sleep with a big smile.")

# Each plot: what the hero wants, where it happens, and slots of (probability, alternatives).
PLOTS = (
    {"goal": "who lost {his} {color} {obj}", "places": ("park", "garden", "forest"),
     "titles": ("{N} and the {Color} {Obj}", "The Lost {Obj}"),
     "summary": "{N} lost {his} {color} {obj}, but with help from {H}, {he} found it {spot}.",
     "qa": ("What did {N} lose?", "{N} lost {his} {color} {obj}."),
     "slots": ((1, INTROS),
               (1, ("{He} had {a_color_obj} that {he} loved very much.",
                    "{His} favorite toy was {a_color_obj}.")),
               (.8, ("Every day, {N} played with it in the {place}.", "{N} took it everywhere {he} went.")),
               (1, ("One day, {N} could not find {his} {obj}.", "One morning, the {obj} was gone!")),
               (.8, ("{He} looked under the bed and behind the door, but it was not there.",
                     "{He} looked everywhere, but {he} could not see it.")),
               (1, ("{N} felt very sad and started to cry.", "{N} was sad and did not know what to do.")),
               (1, HELPER_INTROS),
               (1, ('"Why are you sad?" asked {H}. "I lost my {obj}," said {N}.',
                    '"What is wrong?" asked {H}. "I cannot find my {obj}," said {N}.')),
               (.7, ('"Do not worry. Let us look for it together," said {H}.', '"I will help you," said {H}.')),
               (1, ("They looked all over the {place}. At last, {H} saw something {color} {spot}. It was the {obj}!",
                    "They looked high and low. Soon {N} saw {his} {obj} {spot}.")),
               (1, ('{N} hugged {his} {obj} and smiled. "Thank you, {H}!" {he} said.',
                    '{N} was so happy. {He} said, "Thank you, {H}. You are a good friend!"')),
               (.8, CLOSINGS))},
    {"goal": "who wants to make a cake for {his} mom", "places": ("park", "garden", "forest", "farm"),
     "titles": ("{N} Makes a Cake", "A Cake for Mom"),
     "summary": "{N} wanted to make a birthday cake for {his} mom, so {H} helped {him} bake it.",
     "qa": ("Who was the cake for?", "The cake was for {N}'s mom."),
     "slots": ((1, INTROS),
               (1, ("One day, {N} remembered that it was Mom's birthday.",
                    "Tomorrow was Mom's birthday, and {N} wanted to give her something special.")),
               (1, ("{He} wanted to make her a big cake, but {he} did not know how.",
                    "{He} wanted to bake a cake, but {he} had never made one before.")),
               (.8, ("{N} sat down and felt a little sad.", "{N} felt a little worried.")),
               (1, HELPER_INTROS),
               (1, ('"I can help you," said {H}. "I know how to make a cake!"', '"Let us make it together," said {H}.')),
               (1, ("They put flour, eggs, milk, and sugar in a big bowl.", "They mixed flour, eggs, and milk in a big bowl.")),
               (1, ("Then they baked the cake until it was soft and warm.", "They put the cake in the oven and waited.")),
               (.7, ("At the end, they put {topping} on top.", "Last, {N} put {topping} on top of the cake.")),
               (1, ('When Mom saw the cake, she smiled. "What a lovely surprise!" she said, and gave {N} a big hug.',
                    'Mom was so happy when she saw the cake. "Thank you, my dear {N}!" she said.')),
               (.8, CLOSINGS))},
    {"goal": "who is afraid of the dark", "places": ("park", "forest", "lake"),
     "titles": ("{N} and the Night Sky", "Not Afraid of the Dark"),
     "summary": "{N} was afraid of the dark, but {H} showed {him} the moon and the stars, and {he} was not scared any more.",
     "qa": ("What was {N} afraid of?", "{N} was afraid of the dark."),
     "slots": ((1, INTROS),
               (1, ("{N} was afraid of the dark.", "{N} liked the day, but {he} did not like the night.")),
               (1, ("Every night, when Mom turned off the light, {N} felt scared.",
                    "When the sun went down, {N} hid under {his} blanket.")),
               (.8, ("{He} thought there was a monster under the bed.", "Every little sound made {him} jump.")),
               (1, ("One night, {H}, {hk}, came to the window.", "One night, {hk} named {H} came to the window.")),
               (1, ('"Why are you still awake?" asked {H}. "I am scared of the dark," said {N}.',)),
               (1, ('"Come and look outside," said {H}. "The moon and the stars are shining just for you."',)),
               (1, ("{N} looked up at the sky. It was full of little lights.",
                    "{N} looked out of the window and saw the big, round moon.")),
               (.8, ("The night was quiet and calm, and it was not scary at all.", "{He} saw that the night was beautiful.")),
               (1, ("From then on, {N} was not afraid of the dark any more.",
                    "Now {N} says good night to the moon and sleeps well every night.")),
               (.7, ("{N} and {H} became good friends.", "{N} learned that the night can be pretty too.")))},
    {"goal": "who wants to play outside on a rainy day", "places": ("park", "garden", "playground"),
     "titles": ("{N} and the Rainy Day", "The Rainbow After the Rain"),
     "summary": "{N} was sad because it was raining, but {H} came to play, and they had fun until the rain stopped.",
     "qa": ("What came out after the rain?", "A rainbow came out after the rain."),
     "slots": ((1, INTROS),
               (1, ("One morning, {N} wanted to play in the {place} with {his} {obj}.",
                    "{N} wanted to go to the {place} and play with {his} {obj}.")),
               (1, ("But it was raining, and Mom said {N} had to stay inside.", "But when {he} looked outside, it was raining hard.")),
               (1, ("{N} sat by the window and felt sad.", "{He} sat on the floor and felt very bored.")),
               (1, ("Then {N}'s friend {H}, {hk}, came to visit.", "Then there was a knock at the door. It was {H}, {hk}.")),
               (1, ('"We can play inside!" said {H}.', '"Do not be sad. Rainy days can be fun too," said {H}.')),
               (1, ("They built a big house with blankets and chairs.", "They drew pictures of the sun and the flowers.",
                    "They played a game with blocks and toy cars.")),
               (.8, ("They laughed and had a lot of fun.", "{N} forgot all about the rain.")),
               (1, ("Soon the rain stopped, and a big rainbow came out.",
                    "After a while, the sun came out and a pretty rainbow filled the sky.")),
               (1, ("Then they ran to the {place} and played with the {obj} until dinner.",
                    "So they went to the {place} together and jumped in the puddles.")),
               (.7, CLOSINGS))},
    {"goal": "who wants to make a new friend", "places": ("park", "playground"),
     "titles": ("{N} Finds a Friend", "A New Friend for {N}"),
     "summary": "{N} did not have any friends, so {he} said hello to {H}, and they became best friends.",
     "qa": ("Where did {N} meet {H}?", "{N} met {H} at the {place}."),
     "slots": ((1, INTROS),
               (1, ("{N} had just moved to a new house, and {he} did not have any friends.",
                    "{N} did not have any friends to play with.")),
               (.8, ("{He} felt lonely.", "Every day, {he} played alone with {his} {obj}.")),
               (1, ("One day, {he} went to the {place}.", "One sunny day, Mom took {N} to the {place}.")),
               (1, ("There {he} saw {H}, {hk}, sitting all alone under a tree.",
                    "There {he} saw {hk} named {H}, sitting all alone under a tree.")),
               (.8, ("{H} looked a little sad too.",)),
               (1, ('{N} walked over and said, "Hello! Do you want to play with me?"',
                    '{N} was shy, but {he} said, "Hi! My name is {N}. Can I play with you?"')),
               (1, ('{H} smiled and said, "Yes, please!"',)),
               (1, ("They played {game} all afternoon.", "They played {game} until the sun went down.")),
               (1, ("Now {N} and {H} are best friends.", "From that day on, {N} was never lonely again.")),
               (.7, ("{N} learned that it is good to say hello.",)))},
)
STORY_ASKS = ("Write a short story about {N}, {aN} {goal}.", "Tell me a story about {aN} named {N} {goal}.",
              "Write a story for children about {a_kind} {goal}.", "Write a bedtime story about {aN} named {N}.",
              "Write a short, happy story about {N} and {H}.")

# name, plural, adjective, group, has, eats, lives, sound (None: quiet), one more fact
ANIMALS = (
    ("cat", "cats", "small", "pet", "soft fur, sharp claws, and a long tail", "fish and meat", "in houses with people", 'says "meow"', "Cats like to sleep in warm, sunny places."),
    ("dog", "dogs", "friendly", "pet", "four legs, a wet nose, and a waggy tail", "meat and dog food", "in houses with people", 'barks and says "woof"', "Dogs love to run and catch balls."),
    ("goldfish", "goldfish", "little", "pet", "shiny orange scales and small fins", "tiny fish food", "in a bowl or a tank of water", None, "A goldfish swims around and around all day."),
    ("hamster", "hamsters", "small", "pet", "soft fur, round cheeks, and tiny feet", "seeds and nuts", "in a cage with a little wheel", "squeaks", "A hamster keeps food in its cheeks."),
    ("cow", "cows", "big", "farm", "four legs, a long tail, and black and white spots", "grass and hay", "on farms", 'says "moo"', "Farmers get milk from cows."),
    ("pig", "pigs", "pink", "farm", "a flat nose and a curly tail", "corn and vegetables", "on farms", 'says "oink"', "Pigs like to roll in the mud to stay cool."),
    ("sheep", "sheep", "gentle", "farm", "thick, soft wool", "grass", "on farms and hills", 'says "baa"', "Farmers cut the wool of sheep to make warm clothes."),
    ("horse", "horses", "strong", "farm", "long legs and a long mane", "hay, grass, and apples", "on farms", "neighs", "People can ride on a horse."),
    ("hen", "hens", "busy", "farm", "feathers, two legs, and a small red comb", "seeds and corn", "on farms", 'says "cluck"', "Hens lay eggs that we can eat."),
    ("lion", "lions", "big", "wild", "golden fur and a long tail", "meat", "in hot, grassy lands", "roars very loudly", "A lion is called the king of the animals."),
    ("owl", "owls", "wise", "wild", "big round eyes and soft feathers", "mice and bugs", "in trees", 'says "hoo, hoo"', "Owls sleep in the day and wake up at night."),
    ("frog", "frogs", "little", "wild", "green skin and long legs for jumping", "flies and bugs", "near ponds", 'says "ribbit"', "A frog can jump very far."),
    ("elephant", "elephants", "huge", "wild", "big ears and a long trunk", "grass, leaves, and fruit", "in hot, wild lands", "makes a loud sound with its trunk", "An elephant uses its trunk to drink water."),
    ("bear", "bears", "big", "wild", "thick brown fur and big paws", "berries, fish, and honey", "in the forest", "growls", "Many bears sleep all winter long."),
    ("snake", "snakes", "long", "wild", "smooth skin and no legs", "mice, eggs, and bugs", "in the grass and under rocks", "hisses", "A snake moves by sliding on its belly."),
)
GROUP = {"pet": "pet", "farm": "farm animal", "wild": "wild animal"}

WEATHER = {  # opening, activity, closing
    "sunny": ("The sun is bright and warm, and the sky is blue.", "Children run and play, and dogs chase balls.", "It is a happy day for everyone."),
    "rainy": ("Gray clouds cover the sky, and the rain falls softly.", "Children in boots jump in the big puddles.", "After the rain, everything smells fresh and clean."),
    "snowy": ("Soft white snow covers the ground, and the air is cold.", "Children build a snowman and throw snowballs.", "Later, everyone goes home to drink warm milk."),
    "windy": ("The wind blows hard, and the clouds race across the sky.", "Children fly their kites high in the sky.", "Everyone holds on to their hats!"),
}
PLACES = {  # where, three things to see, something to hear
    "park": ("at the park", ("tall green trees", "swings and a slide", "a pond with ducks"), "birds singing in the trees"),
    "beach": ("at the beach", ("soft yellow sand", "blue waves", "little shells"), "the waves splashing on the sand"),
    "farm": ("on the farm", ("cows in the field", "a big red barn", "hens near the fence"), "a cow saying moo"),
    "garden": ("in the garden", ("pretty flowers", "busy bees", "a little fish pond"), "the bees buzzing"),
    "forest": ("in the forest", ("tall trees", "green moss", "a little river"), "the river and the birds"),
}
WHY = (
    ("Why do birds build nests?", "Birds build nests to keep their eggs safe and warm. When the baby birds come out of the eggs, the nest is their home. The mother and father birds bring them food until they can fly."),
    ("Why do we need to sleep?", "We sleep so our bodies and minds can rest. When we sleep, we grow and get strong. After a good night of sleep, we feel happy and ready to play."),
    ("Why do leaves fall from trees in autumn?", "In autumn, the days get shorter and colder. Many trees stop making food in their leaves, so the leaves turn yellow, red, and brown. Then the leaves fall, and the tree rests until spring."),
    ("Why do we wash our hands?", "We wash our hands to take away dirt and tiny germs. Germs can make us sick. Washing with soap and water before we eat helps us stay healthy."),
    ("Why is the sky dark at night?", "The sky is dark at night because our side of the Earth turns away from the sun. When the sun is gone, we can see the moon and the stars. In the morning, the sun comes back and the sky is bright again."),
    ("Why do fish live in water?", "Fish live in water because they breathe with gills. Gills take the air they need out of the water. If a fish stays out of the water, it cannot breathe."),
    ("Why should we eat fruits and vegetables?", "Fruits and vegetables give our bodies what they need to grow. They help us stay strong and healthy. Apples, carrots, and peas are all good for you."),
    ("Why do bees visit flowers?", "Bees visit flowers to drink a sweet juice called nectar. They take it home and make honey. When they fly from flower to flower, they also help new seeds grow."),
    ("Why do cats purr?", "Cats often purr when they are happy and calm. A purr is a soft, low sound. Many cats purr when you pet them or when they sit on your lap."),
    ("Why do we wear coats in winter?", "Winter is cold, and a coat keeps our bodies warm. It stops the cold wind from touching our skin. A hat and mittens keep our heads and hands warm too."),
    ("Why do plants need water?", "Plants drink water through their roots. Water helps them grow tall and stay green. Without water, a plant gets dry and its leaves start to fall."),
    ("Why is it good to share?", "Sharing makes other people happy. When you share your toys, your friends want to play with you. Sharing helps everyone have more fun together."),
    ("Why do dogs wag their tails?", "Dogs often wag their tails when they are happy or excited. It is one way a dog talks without words. A dog may wag its tail when it sees a friend."),
)
LISTS = (
    ("things you can find in a garden", ("flowers", "bees", "a watering can", "green grass", "butterflies", "worms")),
    ("animals that live on a farm", ("cows", "pigs", "sheep", "horses", "hens", "ducks")),
    ("fruits", ("apples", "bananas", "oranges", "grapes", "strawberries", "pears")),
    ("colors of the rainbow", ("red", "orange", "yellow", "green", "blue", "purple")),
    ("toys that children like", ("a ball", "a teddy bear", "blocks", "a kite", "a doll", "a toy car")),
    ("things you can see in the sky", ("the sun", "the moon", "stars", "clouds", "birds", "a rainbow")),
    ("things you wear when it is cold", ("a warm coat", "a hat", "mittens", "a scarf", "boots")),
    ("things you can find at the beach", ("sand", "shells", "waves", "crabs", "a bucket and spade")),
    ("things you can find in a kitchen", ("a cup", "a spoon", "a bowl", "a pot", "a plate")),
    ("animals that can fly", ("birds", "bees", "butterflies", "owls", "ducks", "bats")),
    ("vegetables", ("carrots", "peas", "corn", "potatoes", "beans", "broccoli")),
)
TIPS = (
    ("staying healthy", ("Eat fruits and vegetables every day.", "Drink plenty of water.", "Play outside and move your body.", "Go to bed early and sleep well.", "Wash your hands before you eat.")),
    ("being a good friend", ("Share your toys.", "Say kind words.", "Listen when your friend talks.", "Help your friend when they are sad.", "Say sorry when you make a mistake.")),
    ("keeping your room clean", ("Put your toys back in the box after you play.", "Make your bed every morning.", "Put dirty clothes in the basket.", "Put your books back on the shelf.")),
    ("staying safe near the road", ("Hold a grown-up's hand.", "Stop and look left and right before you cross.", "Cross only when the light is green.", "Never run after a ball into the road.")),
    ("being kind to animals", ("Be gentle when you pet them.", "Give them fresh food and water.", "Never pull their tails.", "Let them rest when they are tired.")),
)
OPPOSITES = (("big", "small"), ("small", "big"), ("happy", "sad"), ("sad", "happy"), ("hot", "cold"), ("cold", "hot"),
             ("up", "down"), ("down", "up"), ("fast", "slow"), ("slow", "fast"), ("day", "night"), ("night", "day"),
             ("tall", "short"), ("long", "short"), ("open", "closed"), ("in", "out"), ("wet", "dry"), ("dry", "wet"),
             ("full", "empty"), ("empty", "full"), ("new", "old"), ("young", "old"), ("good", "bad"), ("bad", "good"),
             ("loud", "quiet"), ("quiet", "loud"), ("clean", "dirty"), ("dirty", "clean"), ("near", "far"),
             ("far", "near"), ("top", "bottom"), ("first", "last"), ("early", "late"), ("yes", "no"))
PLURALS = (("cat", "cats"), ("dog", "dogs"), ("box", "boxes"), ("mouse", "mice"), ("child", "children"),
           ("foot", "feet"), ("fish", "fish"), ("sheep", "sheep"), ("baby", "babies"), ("leaf", "leaves"),
           ("wolf", "wolves"), ("bus", "buses"), ("dress", "dresses"), ("tooth", "teeth"), ("man", "men"),
           ("woman", "women"), ("goose", "geese"), ("berry", "berries"), ("puppy", "puppies"), ("tree", "trees"),
           ("bird", "birds"), ("toy", "toys"), ("peach", "peaches"), ("knife", "knives"))
RHYMES = (("cat", "hat", "bat", "mat", "rat"), ("dog", "log", "frog", "fog"), ("ball", "tall", "wall", "fall"),
          ("sun", "fun", "run", "bun"), ("tree", "bee", "see", "three"), ("cake", "lake", "make", "bake"),
          ("fish", "dish", "wish"), ("red", "bed", "head"), ("night", "light", "kite", "bright"),
          ("boat", "coat", "goat"), ("star", "car", "far", "jar"), ("moon", "spoon", "soon"), ("house", "mouse"))
# present, past, things that can follow (about a person; {his} is filled in)
VERBS = (("plays", "played", ("with {his} ball in the park", "a game with {his} friends")),
         ("runs", "ran", ("to the big tree", "home with {his} dog")), ("eats", "ate", ("a red apple", "soup for lunch")),
         ("sees", "saw", ("a bird in the tree", "a big fish in the pond")), ("finds", "found", ("a shiny stone", "a lost toy under the bed")),
         ("makes", "made", ("a cake for Mom", "a big sand castle")), ("jumps", "jumped", ("over the puddle", "into the pool")),
         ("sings", "sang", ("a happy song", "a song with Mom")), ("reads", "read", ("a book about dogs", "a story before bed")),
         ("draws", "drew", ("a picture of the sun", "a big red house")), ("swims", "swam", ("in the lake", "with the ducks")),
         ("gives", "gave", ("a flower to Mom", "{his} toy to a friend")), ("takes", "took", ("the dog for a walk", "a nap after lunch")),
         ("climbs", "climbed", ("the tall tree", "up the hill")), ("rides", "rode", ("{his} bike to the park",)),
         ("drinks", "drank", ("a glass of milk",)), ("writes", "wrote", ("a letter to Grandma",)),
         ("catches", "caught", ("the ball", "a little fish")), ("helps", "helped", ("Mom in the kitchen", "Dad in the garden")),
         ("flies", "flew", ("a kite in the park",)), ("digs", "dug", ("a hole in the sand",)),
         ("builds", "built", ("a tower with blocks",)), ("hugs", "hugged", ("{his} teddy bear",)))
STATEMENTS = (("is", "Is", ("happy", "tired", "hungry", "sleepy", "very tall", "in the garden", "sleeping on the bed")),
              ("can", "Can", ("swim very fast", "jump over the fence", "climb the big tree", "sing a song")),
              ("has", "Does", ("a red ball", "a new hat", "a big kite", "a little house")),
              ("likes", "Does", ("cake", "the rain", "to play outside", "green apples")),
              ("wants", "Does", ("a drink of water", "to go to the park", "a new toy")))
COUNTABLES = (("apple", "apples"), ("cookie", "cookies"), ("balloon", "balloons"), ("flower", "flowers"),
              ("egg", "eggs"), ("toy car", "toy cars"), ("sticker", "stickers"), ("crayon", "crayons"))
NUMBER_WORDS = {3: "three", 4: "four", 5: "five"}


def an(word):
    return ("an " if word[0] in "aeiou" else "a ") + word


def cap(text):
    return text[0].upper() + text[1:]


def person(rng, avoid=""):
    he = rng.choice(("she", "he"))
    name = rng.choice([n for n in (GIRLS if he == "she" else BOYS) if n != avoid])
    return name, he, ("her" if he == "she" else "him"), ("her" if he == "she" else "his")


def story(rng):
    plot = rng.choice(PLOTS)
    name, he, him, his = person(rng)
    kind = rng.choice(HERO_KINDS + ("girl" if he == "she" else "boy",) * 3)
    helper, hhe, _, _ = person(rng, avoid=name)
    hkind, hadj = rng.choice(HELPERS)
    hkind = ("girl" if hhe == "she" else "boy") if hkind == "child" else hkind
    color, obj = rng.choice(COLORS), rng.choice(TOYS)
    f = {"N": name, "he": he, "He": cap(he), "him": him, "his": his, "His": cap(his), "kind": kind,
         "a_kind": an(kind), "aN": an(rng.choice(HERO_ADJS) + " " + kind), "H": helper, "hk": an(hadj + " " + hkind),
         "place": rng.choice(plot["places"]), "color": color, "Color": cap(color), "obj": obj, "Obj": obj.title(),
         "a_color_obj": an(color + " " + obj), "spot": rng.choice(SPOTS), "topping": rng.choice(TOPPINGS),
         "game": rng.choice(GAMES)}
    f["goal"] = plot["goal"].format(**f)
    parts = [rng.choice(alts).format(**f) for p, alts in plot["slots"] if p >= 1 or rng.random() < p]
    q, a = plot["qa"] if rng.random() < 0.6 else ("Who helped {N}?", "{H}, {hk}, helped {N}.")
    return {"ask": rng.choice(STORY_ASKS).format(**f), "parts": parts, "text": " ".join(parts),
            "title": rng.choice(plot["titles"]).format(**f), "summary": plot["summary"].format(**f),
            "q": q.format(**f), "a": a.format(**f)}


def t_story(rng):
    s = story(rng)
    return s["ask"], "", s["text"]


def t_story_input(rng):
    s = story(rng)
    kind = rng.choice((0, 0, 0, 0, 0, 1, 2, 2, 3))
    if kind == 0:
        k = rng.choice((2, 3))
        return (rng.choice(("Finish this story.", "Continue the story.", "Write the rest of this story.")),
                " ".join(s["parts"][:k]), " ".join(s["parts"][k:]))
    if kind == 1:
        return (rng.choice(("Give this story a title.", "What is a good title for this story?",
                            "Write a short title for the story.")), s["text"], s["title"])
    if kind == 2:
        return (rng.choice(("Summarize this story in one sentence.", "Tell me in one sentence what happens in the story.",
                            "Write a one-sentence summary of the story.")), s["text"], s["summary"])
    return "Read the story and answer the question: " + s["q"], s["text"], s["a"]


def t_weather(rng):
    weather = rng.choice(sorted(WEATHER))
    place = rng.choice([p for p in sorted(PLACES) if not (p == "beach" and weather == "snowy")])
    where, (a, b, c), sound = PLACES[place]
    opening, activity, closing = WEATHER[weather]
    ask = rng.choice(("Describe a {w} day {p}.", "What is a {w} day {p} like?",
                      "Write a few sentences about a {w} day {p}.", "Tell me about a {w} day {p}."))
    out = (f"It is a {weather} day {where}. {opening} {cap(where)}, you can see {a}, {b}, and {c}. "
           f"{activity} You can hear {sound}. {closing}")
    return ask.format(w=weather, p=where), "", out


def describe(animal):
    name, plural, adj, group, has, eats, lives, sound, fact = animal
    out = f"{cap(an(name))} is {an(adj)} {GROUP[group]}. It has {has}. {cap(plural)} eat {eats} and live {lives}."
    return out + (f" {cap(an(name))} {sound}." if sound else "") + " " + fact


def t_animal(rng):
    animal = rng.choice(ANIMALS)
    name, plural = animal[0], animal[1]
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(("Describe this animal.", "Write a few sentences about this animal.")), name, describe(animal)
    if kind == 1:
        ask = rng.choice((f"Describe {an(name)}.", f"Tell me about {plural}.", f"What is {an(name)} like?"))
        return ask, "", describe(animal)
    if kind == 2:
        group = GROUP[animal[3]]
        return ("Is this animal a pet, a farm animal, or a wild animal?", name,
                f"{cap(an(name))} is {an(group)}. {cap(plural)} live {animal[6]}.")
    clues = [f"It has {animal[4]}.", f"It eats {animal[5]}.", f"It lives {animal[6]}."]
    clues += [f"It {animal[7]}."] if animal[7] else []
    chosen = [clues[0]] + rng.sample(clues[1:], rng.choice((1, 2)))
    rng.shuffle(chosen)
    return (rng.choice(("Which animal is this?", "Guess the animal from the clues.", "Read the clues and name the animal.")),
            " ".join(chosen), f"The animal is {an(name)}. {animal[8]}")


def t_why(rng):
    q, a = rng.choice(WHY)
    return rng.choice(("{q}", "{q} Answer in simple words.", "Explain to a child: {q}")).format(q=q), "", a


def t_list(rng):
    n = rng.choice((3, 3, 4, 5))
    if rng.random() < 0.4:
        topic, items = rng.choice(TIPS)
        items = rng.sample(items, min(n, len(items)))
        ask = rng.choice(("Give {n} tips for {t}.", "List {n} tips for {t}.", "Can you give me {n} tips for {t}?"))
        lead = f"Here are {NUMBER_WORDS[len(items)]} tips for {topic}:\n"
    else:
        topic, items = rng.choice(LISTS)
        items = rng.sample(items, min(n, len(items)))
        ask = rng.choice(("List {n} {t}.", "Name {n} {t}.", "Can you name {n} {t}?", "Write a list of {n} {t}."))
        lead = f"Here are {NUMBER_WORDS[len(items)]} {topic}:\n"
    body = "\n".join(f"{i}. {cap(item)}" for i, item in enumerate(items, 1))
    return ask.format(n=NUMBER_WORDS[len(items)], t=topic), "", (lead if rng.random() < 0.5 else "") + body


def t_math(rng):
    op = rng.choice(("plus", "minus", "times"))
    if op == "plus":
        a, b = rng.randint(2, 10), rng.randint(1, 10)
        c = a + b
    elif op == "minus":
        a = rng.randint(2, 20)
        b = rng.randint(1, a)
        c = a - b
    else:
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        c = a * b
    if rng.random() < 0.5:
        verb = {"plus": f"Add {a} and {b}.", "minus": f"Take {b} away from {a}.", "times": f"Multiply {a} by {b}."}[op]
        ask = rng.choice((f"What is {a} {op} {b}?", f"How much is {a} {op} {b}?", verb))
        return ask, "", f"{a} {op} {b} {rng.choice(('is', 'equals'))} {c}."
    name, he, _, _ = person(rng)
    one, many = rng.choice(COUNTABLES)
    if op == "plus":
        problem = f"{name} has {a} {many}. {cap(he)} gets {b} more. How many {many} does {name} have now?"
        answer = f"{a} plus {b} is {c}, so {name} has {c} {many} now."
    elif op == "minus":
        friend = person(rng, avoid=name)[0]
        problem = f"{name} has {a} {many}. {cap(he)} gives {b} of them to {friend}. How many {many} does {name} have left?"
        left = "no " + many if c == 0 else f"1 {one}" if c == 1 else f"{c} {many}"
        answer = f"{a} minus {b} is {c}, so {name} has {left} left."
    else:
        box = rng.choice(("bags", "boxes", "plates"))
        problem = f"There are {a} {box}. Each one has {b} {many}. How many {many} are there in all?"
        answer = f"{a} times {b} is {c}, so there are {c} {many} in all."
    if rng.random() < 0.5:
        return rng.choice(("Solve this math problem.", "Answer the question.")), problem, answer
    return problem, "", answer


def t_words(rng):
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.choice(OPPOSITES)
        if rng.random() < 0.3:
            return "Write the opposite of this word.", a, b
        ask = rng.choice((f"What is the opposite of {a}?", f'Give the opposite of the word "{a}".',
                          f"Tell me a word that means the opposite of {a}."))
        return ask, "", f"The opposite of {a} is {b}."
    if kind == 1:
        one, many = rng.choice(PLURALS)
        if rng.random() < 0.3:
            return "Write the plural of this word.", one, many
        ask = rng.choice((f"What is the plural of {one}?", f'How do you say more than one "{one}"?'))
        return ask, "", f"The plural of {one} is {many}. For example: one {one}, two {many}."
    group = rng.choice(RHYMES)
    word, *others = rng.sample(group, len(group))
    if len(others) >= 2 and rng.random() < 0.5:
        return f"Give two words that rhyme with {word}.", "", f"{cap(others[0])} and {others[1]} rhyme with {word}."
    ask = rng.choice((f"Name a word that rhymes with {word}.", f'What rhymes with "{word}"?'))
    return ask, "", f"{cap(others[0])} rhymes with {word}."


def sentences(rng, n):
    name, he, _, his = person(rng)
    subjects = [name] + [cap(he)] * (n - 1) if rng.random() < 0.7 else [f"The little {'girl' if he == 'she' else 'boy'}"] * n
    present, past = [], []
    for subject, (now, then, tails) in zip(subjects, rng.sample(VERBS, n)):
        tail = rng.choice(tails).format(his=his)
        present.append(f"{subject} {now} {tail}.")
        past.append(f"{subject} {then} {tail}.")
    return " ".join(present), " ".join(past)


def t_sentence(rng):
    kind = rng.randrange(5)
    if kind <= 1:
        n = rng.choice((1, 2, 3))
        now, then = sentences(rng, n)
        these = "this sentence" if n == 1 else "these sentences"
        if kind == 0:
            return rng.choice((f"Rewrite {these} in the past tense.", f"Change {these} to the past tense.")), now, then
        return f"Rewrite {these} in the present tense.", then, now
    if kind == 2:
        text = rng.choice(sentences(rng, 1))
        count = len(text.split())
        return (rng.choice(("Count the words in this sentence.", "How many words are in this sentence?")), text,
                rng.choice((f"There are {count} words in this sentence.", f"The sentence has {count} words.")))
    if kind == 3:
        name, he, _, _ = person(rng)
        subject = rng.choice((name, name, f"The little {'girl' if he == 'she' else 'boy'}", "The dog", "The cat"))
        verb, front, tails = rng.choice(STATEMENTS)
        tail = rng.choice(tails)
        s = subject[0].lower() + subject[1:] if subject.startswith("The ") else subject
        base = {"has": "have", "likes": "like", "wants": "want"}.get(verb, "")
        question = f"{front} {s} {base} {tail}?" if base else f"{front} {s} {tail}?"
        return (rng.choice(("Turn this sentence into a question.", "Rewrite this statement as a question.")),
                f"{subject} {verb} {tail}.", question)
    numbers = rng.sample(range(1, 31), rng.randint(3, 6))
    down = rng.random() < 0.3
    ask = (rng.choice(("Sort these numbers from biggest to smallest.", "Put these numbers in order, starting with the biggest."))
           if down else rng.choice(("Sort these numbers from smallest to biggest.", "Put these numbers in order.")))
    return ask, ", ".join(map(str, numbers)), ", ".join(map(str, sorted(numbers, reverse=down)))


TASKS = ((t_story, 40), (t_story_input, 25), (t_weather, 9), (t_animal, 9), (t_why, 7), (t_list, 6),
         (t_math, 5), (t_words, 5), (t_sentence, 10))


def generate(count, seed):
    rng = random.Random(seed)
    funcs, weights = zip(*TASKS)
    records, seen = [], set()
    while len(records) < count:
        instruction, input_, output = rng.choices(funcs, weights)[0](rng)
        if (instruction, input_) in seen:
            continue
        seen.add((instruction, input_))
        records.append({"instruction": instruction, "input": input_, "output": output})
    return json.dumps(records, indent=1, ensure_ascii=False) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--check", action="store_true", help="exit 1 if --output differs from what would be generated")
    args = ap.parse_args()
    data = generate(args.count, args.seed).encode("utf-8")
    if args.check:
        if not args.output.is_file() or args.output.read_bytes() != data:
            print(f"{args.output}: differs from what tools/make_demo_data.py generates; rerun it", file=sys.stderr)
            return 1
        print(f"{args.output}: up to date ({args.count} records)")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(f"wrote {args.count} records to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
