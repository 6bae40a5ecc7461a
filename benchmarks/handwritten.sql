-- The benchmark definitions (benchmarks/definitions/*.yml) written by hand, the way an engineer who knows
-- DuckDB would: one GROUP BY per source table family with FILTER aggregates, LEFT JOINed onto the space's
-- profiles. `engage bench` formats {as_of} with a TIMESTAMP literal, runs this as the "hand-written query"
-- phase, and checks per (definition, profile) that it equals what engage's first sync stored.
--
-- Semantics it must share with engage (SPEC §1-2): a profile is user_id, else anonymous_id; rows after the
-- as-of are invisible; `within: N` keeps as_of - N < timestamp; audiences without include_anonymous need a
-- user_id; a trait has a value only for profiles with at least one event of its type; custom traits are the
-- newest non-null value in identifies (ties: received_at, then id).
CREATE SCHEMA IF NOT EXISTS bench_handwritten;

CREATE OR REPLACE TABLE bench_handwritten.result AS
WITH
-- Everyone with a visible row in tracks, pages, screens or identifies (per-event tables repeat tracks).
profiles AS (
    SELECT coalesce(user_id, anonymous_id) AS profile, max(user_id) AS user_id
    FROM (
        SELECT user_id, anonymous_id FROM website.tracks WHERE timestamp <= {as_of}
        UNION ALL SELECT user_id, anonymous_id FROM ios.tracks WHERE timestamp <= {as_of}
        UNION ALL SELECT user_id, anonymous_id FROM website.pages WHERE timestamp <= {as_of}
        UNION ALL SELECT user_id, anonymous_id FROM ios.screens WHERE timestamp <= {as_of}
        UNION ALL SELECT user_id, anonymous_id FROM website.identifies WHERE timestamp <= {as_of}
        UNION ALL SELECT user_id, anonymous_id FROM ios.identifies WHERE timestamp <= {as_of}
    )
    GROUP BY 1
),
orders AS (
    SELECT coalesce(user_id, anonymous_id) AS profile, timestamp AS ts, received_at, id,
        revenue, currency, coupon, shipping_method, shipping_cost
    FROM website.order_completed WHERE timestamp <= {as_of}
    UNION ALL
    SELECT coalesce(user_id, anonymous_id), timestamp, received_at, id,
        revenue, currency, coupon, shipping_method, shipping_cost
    FROM ios.order_completed WHERE timestamp <= {as_of}
),
order_stats AS (
    SELECT
        profile,
        count(*) AS orders,
        count(*) FILTER (WHERE ts > {as_of} - INTERVAL 30 DAY) AS orders_30d,
        count(*) FILTER (WHERE ts > {as_of} - INTERVAL 30 DAY AND revenue > 50) AS orders_30d_over_50,
        sum(revenue) FILTER (WHERE ts > {as_of} - INTERVAL 90 DAY) AS revenue_90d,
        count(*) FILTER (WHERE coupon IS NOT NULL AND shipping_method = 'standard') AS coupon_standard_orders,
        count(*) FILTER (
            WHERE ts BETWEEN TIMESTAMP '2025-04-01 00:00:00' AND TIMESTAMP '2025-04-30 23:59:59'
                AND shipping_method LIKE '%press' AND currency <> 'EUR'
        ) AS april_express_orders,
        count(*) FILTER (
            WHERE ts > {as_of} - INTERVAL 91 DAY AND revenue >= 100 AND coupon IS NULL
        ) AS big_orders_this_quarter,
        coalesce(sum(revenue), 0) AS lifetime_revenue,
        avg(revenue) FILTER (WHERE ts > {as_of} - INTERVAL 90 DAY) AS average_order_value,
        max(revenue) AS largest_order,
        min(shipping_cost) FILTER (WHERE ts > {as_of} - INTERVAL 60 DAY) AS smallest_shipping_cost,
        arg_min(currency, (ts, received_at, id)) FILTER (WHERE currency IS NOT NULL) AS first_order_currency
    FROM orders
    GROUP BY profile
),
product_events AS (
    SELECT coalesce(user_id, anonymous_id) AS profile, TRUE AS viewed, timestamp AS ts, received_at, id,
        name, category
    FROM website.product_viewed WHERE timestamp <= {as_of}
    UNION ALL
    SELECT coalesce(user_id, anonymous_id), TRUE, timestamp, received_at, id, name, category
    FROM ios.product_viewed WHERE timestamp <= {as_of}
    UNION ALL
    SELECT coalesce(user_id, anonymous_id), FALSE, timestamp, received_at, id, NULL, category
    FROM website.product_added WHERE timestamp <= {as_of}
),
product_stats AS (
    SELECT
        profile,
        count(*) FILTER (WHERE viewed) AS views,
        count(*) FILTER (WHERE viewed AND ts > {as_of} - INTERVAL 14 DAY) AS views_14d,
        arg_max(name, (ts, received_at, id)) FILTER (WHERE viewed AND name IS NOT NULL) AS last_viewed_product,
        count(DISTINCT category) FILTER (WHERE ts > {as_of} - INTERVAL 30 DAY) AS categories_browsed
    FROM product_events
    GROUP BY profile
),
pricing_visitors AS (
    SELECT DISTINCT coalesce(user_id, anonymous_id) AS profile
    FROM website.pages
    WHERE timestamp <= {as_of} AND timestamp > {as_of} - INTERVAL 7 DAY
        AND (name = 'Pricing' OR (path LIKE '/blog%' AND title LIKE '%guide%'))
),
mobile_shoppers AS (
    SELECT DISTINCT coalesce(user_id, anonymous_id) AS profile
    FROM ios.screens
    WHERE timestamp <= {as_of} AND timestamp > {as_of} - INTERVAL 30 DAY AND name IN ('Product', 'Cart')
),
custom_traits AS (
    SELECT
        coalesce(user_id, anonymous_id) AS profile,
        arg_max(plan, (timestamp, received_at, id)) FILTER (WHERE plan IS NOT NULL) AS plan,
        arg_max(country, (timestamp, received_at, id)) FILTER (WHERE country IS NOT NULL) AS country
    FROM (
        SELECT user_id, anonymous_id, timestamp, received_at, id, plan, country
        FROM website.identifies WHERE timestamp <= {as_of}
        UNION ALL
        SELECT user_id, anonymous_id, timestamp, received_at, id, plan, country
        FROM ios.identifies WHERE timestamp <= {as_of}
    )
    GROUP BY 1
)
SELECT
    p.profile,
    p.user_id,
    -- audiences
    p.user_id IS NOT NULL AND coalesce(o.orders_30d_over_50, 0) >= 2 AS repeat_buyers,
    p.user_id IS NOT NULL AND coalesce(o.revenue_90d >= 500, FALSE) AS big_spenders,
    p.user_id IS NOT NULL AND coalesce(o.orders, 0) >= 1 AND coalesce(o.orders_30d, 0) = 0 AS lapsed_buyers,
    p.user_id IS NOT NULL AND coalesce(o.orders, 0) = 1 AND NOT coalesce(o.revenue_90d >= 500, FALSE)
        AS one_time_buyers,
    p.user_id IS NOT NULL AND coalesce(o.coupon_standard_orders, 0) >= 2 AS coupon_hunters,
    coalesce(ps.views_14d, 0) >= 5 AND coalesce(o.orders_30d, 0) = 0 AS window_shoppers,
    p.user_id IS NOT NULL AND pv.profile IS NOT NULL AS pricing_page_visitors,
    p.user_id IS NOT NULL AND ms.profile IS NOT NULL AS mobile_shoppers,
    p.user_id IS NOT NULL AND coalesce(ps.views, 0) <= 2 AS light_browsers,
    p.user_id IS NOT NULL AND coalesce(o.orders_30d_over_50, 0) >= 2 AND coalesce(ct.plan = 'free', FALSE)
        AS upgrade_prospects,
    p.user_id IS NOT NULL AND coalesce(o.lifetime_revenue >= 1000, FALSE) AND coalesce(ct.country <> 'BR', FALSE)
        AS vip,
    p.user_id IS NOT NULL AND coalesce(o.april_express_orders, 0) >= 1 AS april_express_shippers,
    -- computed traits (NULL: the profile has no event of the trait's type)
    o.big_orders_this_quarter,
    o.lifetime_revenue,
    o.average_order_value,
    o.largest_order,
    o.smallest_shipping_cost,
    o.first_order_currency,
    ps.last_viewed_product,
    ps.categories_browsed
FROM profiles AS p
LEFT JOIN order_stats AS o ON o.profile = p.profile
LEFT JOIN product_stats AS ps ON ps.profile = p.profile
LEFT JOIN pricing_visitors AS pv ON pv.profile = p.profile
LEFT JOIN mobile_shoppers AS ms ON ms.profile = p.profile
LEFT JOIN custom_traits AS ct ON ct.profile = p.profile;
